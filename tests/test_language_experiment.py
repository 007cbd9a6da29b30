"""End to end: `mosaics reproduce language --quick` trains, evaluates and writes its outputs."""

import json

import pytest

from memory_mosaics.cli import main
from memory_mosaics.data.corpus import shared_data_dir


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared data folder (TinyStories, Wikipedia)")
def test_language_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAICS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["reproduce", "language", "--quick", "--config", "cpu-d128", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["summary"]) == {"mosaic-1", "gpt-1"}
    for entry in results["runs"].values():
        assert len(entry["ood"]["loss_by_position"]) == results["context"] == 64
        assert entry["block_params"] == 12 * 32 * 32  # equal block budgets for both models
        assert len(entry["generations"]["greedy"]) == 4
    assert (out / "figure7.png").is_file() and (out / "figure8.png").is_file()
    assert "mosaic depth 1" in (out / "generations.md").read_text()
    # a second invocation reuses the finished runs instead of training again
    assert main(["reproduce", "language", "--quick", "--config", "cpu-d128", "--out", str(out)]) == 0
    assert (out / "mosaic-1" / "train.log").read_text().count("starting from scratch") == 1
    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis["tokens"]["mosaic-1"]["valid"]) == {"all", "frequent", "medium", "rare", "seen", "unseen"}
    (out / "analysis.json").unlink()
    assert main(["reproduce", "language", "--replot", "--out", str(out)]) == 0  # figures and analysis again
    assert (out / "analysis.json").is_file()


def test_missing_config_is_a_clean_error(tmp_path, capsys):
    assert main(["reproduce", "language", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared data folder (TinyStories, Wikipedia)")
def test_learning_rate_sweep_and_long_context(tmp_path, monkeypatch):
    """Each model's full run takes the swept rate with the lowest validation loss; a diverging sweep
    run is recorded as failed without stopping the others; the Mosaic is also scored at 2x context."""
    monkeypatch.setenv("MOSAICS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = [
        "reproduce",
        "language",
        "--quick",
        "--config",
        "cpu-d128",
        "--out",
        str(out),
        "--models",
        "mosaic",
        "--lrs",
        "1e-3",
        "1e12",
        "--long-context",
        "2",
        "--jobs",
        "2",
    ]
    assert main(argv) == 0
    sweep = json.loads((out / "sweep.json").read_text())["mosaic-1"]
    assert sweep["lr"] == 1e-3 and sweep["failed_lrs"] == [1e12] and list(sweep["valid_loss_by_lr"]) == ["0.001"]
    results = json.loads((out / "results.json").read_text())
    entry = results["runs"]["mosaic-1"]
    assert entry["lr"] == 1e-3 and entry["finished"]
    assert len(entry["ood_long"]["loss_by_position"]) == 2 * results["context"]
    assert entry["curves"]["diagnostics"] and "layer0/cmem_beta" in entry["curves"]["diagnostics"][-1]
