"""What an install outside the checkout relies on (issue 10, item 5), without building a wheel
(tests/test_wheel.py does that): presets by name, the shared data folder from the environment or a
flag with errors that say what is missing, optional packages that warn instead of vanishing."""

import builtins
import sys
import warnings

import pytest

from memory_mosaics import configs
from memory_mosaics.cli import main
from memory_mosaics.data import corpus
from memory_mosaics.data.sources import resolve_data_path
from memory_mosaics.training.config import TrainConfig
from memory_mosaics.training.metrics import MetricsLog


def test_presets_by_name_and_path(tmp_path, monkeypatch):
    assert configs.names() == ["cpu-d128", "cpu-d256", "mosaic-1b", "paper"]
    monkeypatch.chdir(tmp_path)  # no checkout around: the presets come from the package
    by_name = TrainConfig.from_file("cpu-d128")
    assert (by_name.n_embd, by_name.context, by_name.tokenizer) == (128, 256, "bpe:4096")
    assert TrainConfig.from_file("paper.toml").n_embd == 768
    assert TrainConfig.from_file("configs/cpu-d256.toml").n_embd == 256  # the presets' old place
    own = tmp_path / "cpu-d128.toml"  # a file wins over the preset of the same name
    own.write_text('n_embd = 32\ntrain = "x.txt"\n')
    assert TrainConfig.from_file(str(own)).n_embd == 32
    with pytest.raises(FileNotFoundError, match="preset name: cpu-d128, cpu-d256, mosaic-1b, paper"):
        configs.resolve("cpu-d512")


def test_unknown_preset_is_one_line_exit_2(tmp_path, capsys):
    assert main(["reproduce", "language", "--config", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mosaics: error: --config nope: no such file") and "cpu-d128" in err


def test_shared_data_location_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(tmp_path / "absent"))
    with pytest.raises(ValueError) as err:
        resolve_data_path("shared:tinystories/train.txt")
    message = str(err.value)
    for part in ("tinystories/train.txt", "MOSAICS_SHARED_DATA=", "is not a folder", "--shared-data DIR"):
        assert part in message
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"tinystories/train.txt not found in the shared data folder"):
        resolve_data_path("shared:tinystories/train.txt")
    (tmp_path / "data" / "tinystories").mkdir()
    (tmp_path / "data" / "tinystories" / "train.txt").write_text("text")
    assert resolve_data_path("shared:tinystories/train.txt") == str(tmp_path / "data" / "tinystories" / "train.txt")
    assert resolve_data_path("local.txt") == "local.txt"


def test_no_default_shared_data_outside_a_checkout(tmp_path, monkeypatch):
    """Installed (no pyproject.toml above the package), the folder comes from the environment only."""
    monkeypatch.delenv("MOSAICS_SHARED_DATA", raising=False)
    installed = tmp_path / "venv" / "lib" / "python3" / "site-packages" / "memory_mosaics" / "data" / "corpus.py"
    monkeypatch.setattr(corpus, "__file__", str(installed))
    (tmp_path / "venv" / "lib" / "shared" / "data").mkdir(parents=True)  # where the old default pointed
    assert corpus.shared_data_dir() is None
    with pytest.raises(ValueError, match="the shared data folder was not found"):
        resolve_data_path("shared:tinystories/train.txt")


def test_shared_data_flag_sets_the_folder(tmp_path, monkeypatch, capsys):
    # main() sets the variable for its workers: setenv first so that teardown restores the original
    monkeypatch.setenv("MOSAICS_SHARED_DATA", "unset by the test")
    monkeypatch.delenv("MOSAICS_SHARED_DATA")
    args = ["train", "--data", "shared:corpus.txt", "--out", str(tmp_path / "run"), "--max-steps", "1"]
    assert main(["--shared-data", str(tmp_path / "data"), *args]) == 2
    err = capsys.readouterr().err
    assert f"MOSAICS_SHARED_DATA={tmp_path / 'data'} is not a folder" in err


def test_missing_tensorboard_warns(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = MetricsLog(tmp_path, tensorboard=True)
        log.close()
        (tmp_path / "off").mkdir()
        MetricsLog(tmp_path / "off", tensorboard=False).close()  # not requested: nothing said
    assert log.tb is None
    said = [str(w.message) for w in caught if "tensorboard" in str(w.message).lower()]
    assert len(said) == 1 and "memory-mosaics[tensorboard]" in said[0]
