"""The CLI's error boundary (issue 9, item 1) and validation before work starts (item 2).

Expected failures end with one line ``mosaics: error: ...`` and exit status 2, runtime failures with
exit status 1, Ctrl-C with 130 and a closed stdout quietly with 141; ``--debug``/``MOSAICS_DEBUG=1``
re-raise, and a bug still shows its traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from memory_mosaics import cli
from memory_mosaics.commands import generate
from memory_mosaics.training.loop import TrainingDiverged


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("mosaics: error: "), err
    assert "Traceback" not in err
    return lines[0]


def run_raising(monkeypatch, exc: BaseException, *extra: str) -> int:
    def boom(args):
        raise exc

    monkeypatch.setattr(generate, "run", boom)
    return cli.main([*extra, "generate", "--checkpoint", "ckpt-dir"])


@pytest.mark.parametrize(
    "exc, status, words",
    [
        (ValueError("--lr must be > 0, got -1"), 2, "--lr must be > 0"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope/x"), 2, "/nope/x"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/etc/passwd/x"), 2, "/etc/passwd/x"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 2, "give a file path"),
        (FileExistsError(errno.EEXIST, "File exists", "/tmp/f"), 2, "choose another path"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "permissions"),
        (OSError(errno.ENOSPC, "No space left on device", "/full/out.json"), 2, "no space left on the device writing"),
        (OSError(errno.ENOSPC, "No space left on device"), 2, "free some space"),
        (OSError(errno.EIO, "Input/output error", "/dev/sdz"), 2, "/dev/sdz"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "not UTF-8"),
        (json.JSONDecodeError("Expecting value", "x", 0), 2, "Expecting value"),
        (EOFError("Ran out of input"), 2, "cannot read the checkpoint ckpt-dir"),
        (RuntimeError("PytorchStreamReader failed reading zip archive"), 2, "cannot load the checkpoint ckpt-dir"),
        (RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch"), 2, "cannot load the checkpoint"),
        (TrainingDiverged("loss is nan at step 3"), 1, "loss is nan at step 3"),
        (MemoryError(), 1, "out of memory"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_expected_failures_end_with_one_line(monkeypatch, capsys, exc, status, words):
    monkeypatch.delenv("MOSAICS_DEBUG", raising=False)
    assert run_raising(monkeypatch, exc) == status
    line = one_error_line(capsys.readouterr().err)
    assert words in line, line


def test_a_bug_still_shows_its_traceback(monkeypatch):
    monkeypatch.delenv("MOSAICS_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match="a bug"):
        run_raising(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(KeyError):
        run_raising(monkeypatch, KeyError("data_rng"))


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_re_raises(monkeypatch, how):
    monkeypatch.delenv("MOSAICS_DEBUG", raising=False)
    extra = ["--debug"] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("MOSAICS_DEBUG", "1")
    with pytest.raises(ValueError, match="bad"):
        run_raising(monkeypatch, ValueError("bad"), *extra)


def test_safetensors_error_names_the_checkpoint(monkeypatch, capsys):
    from safetensors import SafetensorError

    monkeypatch.delenv("MOSAICS_DEBUG", raising=False)
    assert run_raising(monkeypatch, SafetensorError("Error while deserializing header: HeaderTooSmall")) == 2
    assert "ckpt-dir" in one_error_line(capsys.readouterr().err)


def tiny_checkpoint(directory):
    from memory_mosaics.models import lookup
    from memory_mosaics.training.config import TrainConfig

    config = TrainConfig(model="gpt", n_layer=1, n_head=1, n_embd=8, context=8).model_config(64)
    lookup("gpt")[1](config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupted_weights_of_a_real_checkpoint(tmp_path, capsys, damage):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64}[damage])
    assert cli.main(["generate", "--checkpoint", str(ckpt), "--prompt", "x"]) == 2
    assert str(ckpt) in one_error_line(capsys.readouterr().err)


def test_bad_config_files(tmp_path, capsys):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"lr": "\xe9"}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    for path in (latin1, listed, tmp_path):
        assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
        assert str(path) in one_error_line(capsys.readouterr().err)


def test_eval_refuses_an_out_under_a_file_before_loading(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(blocker), "--out", str(blocker / "r.json")]
    assert cli.main([*args, "--context", "8"]) == 2
    assert str(blocker) in one_error_line(capsys.readouterr().err)


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from memory_mosaics import cli
    from memory_mosaics.commands import generate

    def flood(args):
        while True:
            print("x" * 1000)

    def wait(args):
        print("ready", flush=True)
        time.sleep(60)

    generate.run = {"flood": flood, "wait": wait}[sys.argv[1]]
    sys.exit(cli.main(["generate", "--checkpoint", "c"]))
    """
)


def child(mode: str, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MOSAICS_DEBUG"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], env=env, stderr=subprocess.PIPE, **kwargs)


def test_closed_stdout_exits_quietly_with_141():
    proc = child("flood", stdout=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, err
    assert err.decode().strip() == ""


def test_ctrl_c_exits_130_with_one_line():
    proc = child("wait", stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in one_error_line(err.decode())


# ---------------------------------------------------------------------- item 2: validation before work starts
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--lr", "inf"], "lr (--lr) must be a finite number, got inf"),
        (["--lr", "0"], "lr (--lr) must be > 0"),
        (["--lr", "3e38"], "lr (--lr) must be at most 1e+30"),
        (["--min-lr", "1e31"], "min_lr (--min-lr) must be at most 1e+30"),
        (["--set", "lr=Infinity"], "lr (--lr) must be a finite number"),
        (["--set", "lr=1e999999"], "lr (--lr) must be a finite number"),
        (["--set", f"lr={10**400}"], "too large for a float"),
        (["--min-lr", "inf"], "min_lr (--min-lr) must be a finite number"),
        (["--min-lr", "-1"], "min_lr (--min-lr) must be >= 0"),
        (["--set", "weight_decay=NaN"], "weight_decay (--weight-decay) must be a finite number, got nan"),
        (["--weight-decay", "-0.1"], "weight_decay (--weight-decay) must be >= 0"),
        (["--grad-clip", "nan"], "grad_clip (--grad-clip) must be a finite number, got nan"),
        (["--set", "grad_clip=NaN"], "grad_clip (--grad-clip) must be a finite number"),
        (["--grad-clip", "-1"], "grad_clip (--grad-clip) must be >= 0"),
        (["--betas", "0.9", "1.0"], "betas (--betas) must be two numbers in [0, 1)"),
        (["--betas", "nan", "0.9"], "(--betas) must be a finite number"),
        (["--set", "betas=[0.9]"], "betas (--betas) must be two numbers"),
        (["--dropout", "1"], "dropout (--dropout) must be in [0, 1)"),
        (["--dropout", "nan"], "dropout (--dropout) must be a finite number"),
        (["--threads", "-1"], "threads (--threads) must be >= 0"),
        (["--threads", "100000"], "threads (--threads) must be at most"),
        (["--context", "-1"], "context (--context) must be positive, got -1"),
        (["--n-embd", "0"], "n_embd (--n-embd) must be positive"),
        (["--n-layer", "100000000"], "GiB of parameters; the machine has"),
        (["--n-embd", "2000000000"], "choose a smaller --n-layer or --n-embd"),
        (["--seed", str(2**70)], "seed (--seed) must be in [0, 2**63 - 1]"),
    ],
)
def test_train_options_are_checked_before_work(tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    assert cli.main(["train", "--data", str(tmp_path / "none.txt"), "--out", str(out), *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line, line
    assert not out.exists()  # refused before anything was written


def test_train_config_file_non_finite(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"grad_clip": NaN}')  # Python's JSON reader accepts NaN
    assert cli.main(["train", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "grad_clip (--grad-clip) must be a finite number" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--temperature", "nan"], "--temperature must be 0 (greedy) or a finite number >= 0.001, got nan"),
        (["--temperature", "inf"], "--temperature must be 0"),
        (["--temperature", "-1"], "--temperature must be 0"),
        (["--temperature", "1e-30"], "got 1e-30"),
        (["--top-k", "0"], "--top-k must be >= 1, got 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
        (["--repetition-penalty", "nan"], "--repetition-penalty must be a finite number > 0"),
        (["--stop", ""], "--stop needs a non-empty text"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
        (["--seed", str(2**64)], "--seed must be in [0, 2**63 - 1]"),
        (["--seed", "-1"], "--seed must be in"),
        (["--prompt", "caf\udce9"], "--prompt is not UTF-8 text"),
    ],
)
def test_generate_options_are_checked_before_loading(tmp_path, capsys, extra, words):
    # the checkpoint does not exist: the option is refused first
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "none"), *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line, line


def test_generate_accepts_the_bounds(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for t in ("0", "0.001"):
        # the options pass; the tiny checkpoint has no tokenizer, which is the error that follows
        assert cli.main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--temperature", t]) == 2
        assert "tokenizer" in one_error_line(capsys.readouterr().err)


def test_generate_non_utf8_stdin(tmp_path):
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "tests"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(src)!r})
        from test_cli_errors import tiny_checkpoint
        from memory_mosaics.data import tokenizers
        from memory_mosaics import cli
        from pathlib import Path
        ckpt = tiny_checkpoint(Path({str(tmp_path / "ckpt")!r}))
        tokenizers.load_tokenizer = lambda path: None  # the prompt is read before it is tokenized
        sys.exit(cli.main(["generate", "--checkpoint", str(ckpt)]))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MOSAICS_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-c", script], input=b"caf\xe9 \xff", capture_output=True, env=env, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "the prompt on stdin is not UTF-8 text" in one_error_line(proc.stderr.decode())


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--context", "-1"], "--context must be >= 1, got -1"),
        (["--context", "0"], "--context must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-windows", "-1"], "--max-windows must be >= 0"),
        (["--dtype", "fp8"], "unknown --dtype 'fp8'"),
    ],
)
def test_eval_options_are_checked_before_loading(tmp_path, capsys, extra, words):
    args = ["eval", "--checkpoint", str(tmp_path / "none"), "--data", "x", "--out", str(tmp_path / "r.json")]
    assert cli.main([*args, *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line, line


@pytest.mark.parametrize("damage", ["list", "not-json", "shape"])
def test_damaged_or_mismatched_checkpoint_config(tmp_path, capsys, damage):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    config = ckpt / "config.json"
    if damage == "list":
        config.write_text("[1, 2]")
    elif damage == "not-json":
        config.write_bytes(b"\xff{")
    else:
        config.write_text(config.read_text().replace('"n_embd": 8', '"n_embd": 16'))
    for command in (["generate", "--prompt", "x"], ["eval", "--data", "x", "--out", str(tmp_path / "r.json")]):
        assert cli.main([*command, "--checkpoint", str(ckpt)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(ckpt) in line and ("use another" in line), line


@pytest.mark.parametrize(
    "args, words",
    [
        (["data", "--num-train", str(10**12)], "--num-train must be in [0, 1,000,000]"),
        (["data", "--num-train", "1", "--num-val", "-1"], "--num-val must be in"),
        (["data", "--num-train", "1", "--seed", str(2**64)], "--seed must be in"),
        (["baselines", "--num-envs", str(10**9)], "--num-envs must be in"),
        (["baselines", "--max-order", "1000"], "--max-order must be in [1, 16]"),
    ],
)
def test_regbench_sizes_are_bounded(tmp_path, capsys, args, words):
    extra = ["--out", str(tmp_path / "x.jsonl")] if args[0] == "data" else []
    assert cli.main(["regbench", *args, *extra]) == 2
    assert words in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("saved", ["[1]", '{"context": -3}', "{", '{"lr": 1}'])
def test_eval_names_a_damaged_train_config(tmp_path, capsys, saved):
    from memory_mosaics.data.tokenizers import train_bpe

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "train_config.json").write_text(saved)
    train_bpe(["hello world, hello there"] * 4, 260).save(ckpt)
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--data", "x", "--out", str(tmp_path / "r.json")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt / "train_config.json") in line and "--context N" in line, line


@pytest.mark.parametrize("spec", ["{}", "[1]", "garbage"])
def test_a_damaged_tokenizer_is_named(tmp_path, capsys, spec):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "tokenizer.json").write_text(spec)
    assert cli.main(["generate", "--checkpoint", str(ckpt), "--prompt", "x"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt / "tokenizer.json") in line, line
