"""Trainer, checkpoints, DDP and the train / eval / generate commands, on a tiny generated corpus."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from memory_mosaics import cli, configs
from memory_mosaics.training.checkpoint import load_state, resolve_checkpoint
from memory_mosaics.training.config import TrainConfig
from memory_mosaics.training.trainer import Trainer

NAMES = ["Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe"]
THINGS = ["a red ball", "a big dog", "a small cat", "a green tree", "a blue box", "a funny hat"]
PLACES = ["the park", "the garden", "the house", "the beach", "the forest"]
TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--context",
    "32",
    "--batch-size",
    "8",
    "--tokenizer",
    "bpe:320",
    "--warmup",
    "2",
    "--lr",
    "1e-2",
    "--no-progress",
    "--no-tensorboard",
]


def _stories(n, seed):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        who, what, where = r.choice(NAMES), r.choice(THINGS), r.choice(PLACES)
        out.append(
            f"Once upon a time, {who} went to {where}. {who} saw {what}. {who} liked {what} very much. "
            f"Then {who} went home and was happy."
        )
    return "\n<|endoftext|>\n".join(out) + "\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_text(_stories(360, 0))
    (d / "valid.txt").write_text(_stories(40, 1))
    return {"train": str(d / "train.txt"), "valid": str(d / "valid.txt"), "cache": str(d / "cache")}


def tiny_config(data, **overrides):
    run = dict(valid=data["valid"], cache_dir=data["cache"], separator="eot", tokenizer="bpe:320", warmup=2)
    sizes = dict(n_embd=32, context=32, batch_size=8, max_steps=30)
    intervals = dict(eval_interval=10, eval_windows=16, log_interval=5, checkpoint_interval=10)
    return tiny_train_config(data["train"], **{**run, **sizes, **intervals, **overrides})


def train_args(data, out, *extra):
    return ["train", "--data", data["train"], "--cache-dir", data["cache"], "--out", str(out), *TINY, *extra]


def read_metrics(run_dir, split="train"):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{") and line.endswith("}")]  # not a cut row
    return [r for r in rows if r["split"] == split]


def subprocess_env():
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_process_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` (e.g. torchrun and its workers) in its own session; past ``timeout`` seconds, kill
    the whole session, workers included, and return exit status -9 (no orphan outlives the test)."""
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s)"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def mosaic_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaic_run")
    summary = Trainer(tiny_config(data, max_steps=100, eval_interval=25, checkpoint_interval=50), out).fit()
    return out, summary


# ---------------------------------------------------------------------- training
def test_mosaic_loss_decreases_and_run_dir_is_complete(mosaic_run):
    out, summary = mosaic_run
    losses = [r["loss"] for r in read_metrics(out)]
    assert losses[-1] < losses[0] - 1.5, losses
    assert summary["step"] == 100 and summary["val_loss"] < 3.5
    assert [r["step"] for r in read_metrics(out, "valid")] == [25, 50, 75, 100]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "split", "loss", "lr", "tokens_per_s", "data_fraction"} <= set(header)
    last = resolve_checkpoint(out)
    assert last.name == "ckpt-00000100" and (out / "best").is_symlink()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_config.json", "state.pt"):
        assert (last / name).is_file(), name
    state = load_state(last)
    assert state["step"] == 100 and state["tokens_seen"] == 100 * 8 * 32
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 100


def test_gpt_loss_decreases_with_accumulation(data, tmp_path):
    cfg = tiny_config(data, model="gpt", grad_accum=2, max_steps=30, valid="", lr=3e-3)
    Trainer(cfg, tmp_path).fit()
    losses = [r["loss"] for r in read_metrics(tmp_path)]
    assert losses[-1] < losses[0] - 1.0, losses


def test_sigkill_then_resume_reaches_the_same_weights(data, tmp_path):
    """A run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one (CPU)."""
    env = subprocess_env()
    args = [*TINY, "--max-steps", "150", "--checkpoint-interval", "5", "--log-interval", "1", "--threads", "1"]
    base = [sys.executable, "-m", "memory_mosaics.cli"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([*base, *train_args(data, ref, *args)], env=env, check=True, capture_output=True, timeout=120)

    proc = subprocess.Popen(
        [*base, *train_args(data, run, *args)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    try:
        while time.time() < deadline:  # kill between two checkpoints, after the first two
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and any(
                json.loads(row)["step"] >= 13 for row in metrics.read_text().splitlines()[:-1]
            ):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_state(resolve_checkpoint(run))["step"]
    killed_rows = read_metrics(run)
    assert 10 <= killed_at < 150

    done = subprocess.run(
        [*base, *train_args(data, run, *args, "--resume")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stderr + done.stdout
    a, b = load_file(ref / "last" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = load_state(ref / "last"), load_state(run / "last")
    for group_a, group_b in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    # the log is append-only: the killed run's rows stay, the redone steps are logged again after them
    rows = read_metrics(run)
    assert rows[: len(killed_rows)] == killed_rows and len(rows) >= 150 and rows[-1]["step"] == 150
    latest = {r["step"]: r for r in rows}  # the last row per step
    assert sorted(latest) == list(range(1, 151))
    assert [latest[s]["loss"] for s in range(1, 151)] == [r["loss"] for r in read_metrics(ref)]


def test_two_process_ddp_matches_one_process(data, tmp_path):
    args = [
        "--valid",
        data["valid"],
        "--max-steps",
        "4",
        "--grad-accum",
        "2",
        "--dropout",
        "0",
        "--eval-interval",
        "2",
        "--eval-windows",
        "16",
        "--log-interval",
        "1",
    ]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert cli.main(train_args(data, single, *args)) == 0
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "memory_mosaics.cli",
        *train_args(data, ddp, *args),
    ]
    for _ in range(2):  # one retry: torchrun's rendezvous can fail transiently; the numbers below are strict
        shutil.rmtree(ddp, ignore_errors=True)
        done = run_process_group(cmd, timeout=180)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(single / "last" / "model.safetensors"), load_file(ddp / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    for split in ("train", "valid"):
        la, lb = [r["loss"] for r in read_metrics(single, split)], [r["loss"] for r in read_metrics(ddp, split)]
        assert len(la) == len(lb) > 0
        assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys):
    rc = cli.main(
        train_args(data, tmp_path, "--lr", "1e6", "--warmup", "0", "--max-steps", "30", "--checkpoint-interval", "1")
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and "loss is nan" in err[0] and "the last good checkpoint is kept" in err[0], err
    last = resolve_checkpoint(tmp_path)
    assert str(last) in err[0]
    step = load_state(last)["step"]
    assert f"at step {step + 1};" in err[0]
    assert all(torch.isfinite(t).all() for t in load_file(last / "model.safetensors").values())


# ---------------------------------------------------------------------- configuration and CLI errors
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "rnn"], "unknown model kind 'rnn'"),
        (["--set", "n_layers=2"], "unknown config key(s): n_layers"),
        (["--model-arg", "no_such_field=1"], "unknown MosaicConfig fields: no_such_field"),
        (["--batch-size", "6", "--grad-accum", "4"], "must be divisible by grad_accum"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(data, tmp_path, capsys, extra, message):
    assert cli.main(train_args(data, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_cli_missing_data_and_unknown_file_key(data, tmp_path, capsys):
    args = train_args(data, tmp_path / "out")
    args[args.index("--data") + 1] = str(tmp_path / "missing.txt")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corpus path not found" in err[0] and "missing.txt" in err[0]

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"n_layer": 2, "learning_rate": 1e-3}))
    assert cli.main(train_args(data, tmp_path / "out", "--config", str(cfg))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key(s): learning_rate" in err[0]

    assert cli.main(["train", "--data", data["train"]]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_config_resolution_order(tmp_path):
    from memory_mosaics.cli import build_parser
    from memory_mosaics.commands.train import resolve_config

    toml = tmp_path / "c.toml"
    toml.write_text('model = "gpt"\nn_layer = 3\nbetas = [0.8, 0.9]\n[model_args]\nbias = true\n')
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(toml),
            "--out",
            str(tmp_path),
            "--n-layer",
            "5",
            "--set",
            "lr=0.5",
            "--model-arg",
            "block_size=64",
        ]
    )
    cfg = resolve_config(args)
    assert (cfg.model, cfg.n_layer, cfg.lr, cfg.betas) == ("gpt", 5, 0.5, (0.8, 0.9))
    assert cfg.model_args == {"bias": True, "block_size": 64}
    assert cfg.model_config(50257).vocab_size == 50304
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="'n_layer' expects a value of type int"):
        TrainConfig.from_dict({"n_layer": "two"})


@pytest.mark.parametrize("preset", configs.names())
def test_presets_load(preset):
    cfg = TrainConfig.from_file(preset)
    assert cfg.train.startswith("shared:") and cfg.batch_size % cfg.grad_accum == 0
    cfg.model_config(50257)  # a valid model config


def test_refuses_to_overwrite_a_run_without_resume(mosaic_run, data, capsys):
    out, _ = mosaic_run
    assert cli.main(train_args(data, out, "--max-steps", "5")) == 2
    assert "pass --resume" in capsys.readouterr().err


# ---------------------------------------------------------------------- eval and generate
def test_eval_writes_json_and_plot(mosaic_run, data, tmp_path, capsys):
    out, summary = mosaic_run
    result = tmp_path / "res" / "valid.json"
    rc = cli.main(
        [
            "eval",
            "--checkpoint",
            str(out),
            "--data",
            data["valid"],
            "--out",
            str(result),
            "--cache-dir",
            data["cache"],
            "--max-windows",
            "16",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads(result.read_text())
    assert {"loss", "perplexity", "loss_by_position"} <= set(res)
    assert len(res["loss_by_position"]) == 32 and res["context"] == 32
    assert math.isclose(res["perplexity"], math.exp(res["loss"]))
    assert math.isclose(res["loss"], sum(res["loss_by_position"]) / 32)
    assert res["windows"] == 16 and math.isclose(res["loss"], summary["val_loss"], rel_tol=1e-6)
    assert res["loss_by_position"][-1] < res["loss_by_position"][0]
    pytest.importorskip("matplotlib")
    assert result.with_suffix(".png").is_file()


def test_eval_errors(mosaic_run, data, tmp_path, capsys):
    out, _ = mosaic_run
    assert (
        cli.main(
            ["eval", "--checkpoint", str(tmp_path / "nope"), "--data", data["valid"], "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


class Recorder:
    def __init__(self):
        self.chunks = []

    def write(self, text):
        self.chunks.append(text)

    def flush(self):
        pass


def test_generate_streams_text(mosaic_run, monkeypatch):
    out, _ = mosaic_run
    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    prompt = "Once upon a time, Tom went to the"
    assert (
        cli.main(
            ["generate", "--checkpoint", str(out), "--prompt", prompt, "--max-new-tokens", "10", "--temperature", "0"]
        )
        == 0
    )
    text = "".join(rec.chunks)
    assert text.startswith(prompt) and len(text) > len(prompt) + 10, text
    assert len(rec.chunks) >= 8  # the prompt, then the continuation token by token

    args = [
        "generate",
        "--checkpoint",
        str(out),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "10",
        "--temperature",
        "0.8",
        "--top-k",
        "20",
        "--seed",
        "0",
    ]
    rec.chunks.clear()
    assert cli.main(args) == 0
    first = "".join(rec.chunks)
    rec.chunks.clear()
    assert cli.main(args) == 0
    assert "".join(rec.chunks) == first  # --seed makes sampling repeatable

    rec.chunks.clear()
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Tom went to"))
    assert (
        cli.main(
            ["generate", "--checkpoint", str(out / "last"), "--max-new-tokens", "5", "--temperature", "0", "--no-echo"]
        )
        == 0
    )
    assert not "".join(rec.chunks).startswith("Tom went to")


def test_generate_stops_before_a_stop_text_and_takes_the_sampling_options(mosaic_run, monkeypatch):
    """--stop: the output ends right before the first occurrence of the stop text in the greedy
    continuation, and never shows any part of it; --top-p and --repetition-penalty are accepted."""
    out, _ = mosaic_run
    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    base = ["generate", "--checkpoint", str(out), "--prompt", "Once upon a time", "--temperature", "0", "--no-echo"]
    assert cli.main([*base, "--max-new-tokens", "20"]) == 0
    full = "".join(rec.chunks).rstrip("\n")
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3 and stop.strip(), full
    rec.chunks.clear()
    assert cli.main([*base, "--max-new-tokens", "20", "--stop", stop]) == 0
    assert "".join(rec.chunks) == full[: full.index(stop)] + "\n"
    rec.chunks.clear()
    args = [*base, "--max-new-tokens", "5", "--top-p", "0.9", "--repetition-penalty", "1.3", "--temperature", "1"]
    assert cli.main([*args, "--seed", "0"]) == 0 and "".join(rec.chunks).strip()


def test_reference_warmup_starts_at_zero():
    """The authors' get_cosine_lr: lr * it / warmup during warm-up, cosine from the end of warm-up."""
    from memory_mosaics.training.optim import warmup_cosine

    lr = lambda step, **kw: warmup_cosine(step, 5e-3, 1e-4, 2000, 80000, **kw)  # noqa: E731
    assert lr(0, from_zero=True) == 0.0 and lr(1000, from_zero=True) == pytest.approx(2.5e-3)
    assert lr(0) == pytest.approx(5e-3 / 2000)  # the shifted form reaches lr one step earlier
    assert lr(2000, from_zero=True) == lr(2000) == pytest.approx(5e-3)
    mid = 2000 + (80000 - 2000) // 2
    assert lr(mid, from_zero=True) == pytest.approx(1e-4 + 0.5 * (5e-3 - 1e-4))
    assert lr(80000, from_zero=True) == lr(90000) == pytest.approx(1e-4)


def test_train_config_maps_dropout_like_the_reference():
    cfg = TrainConfig(train="x", dropout=0.05)
    mosaic = cfg.model_config(4096)
    assert (mosaic.dropout, mosaic.attn_dropout, mosaic.pmem_attn_dropout) == (0.05, 0.0, 0.05)
    assert cfg.warmup_from_zero
    gpt = TrainConfig(train="x", model="gpt", dropout=0.1).model_config(4096)
    assert gpt.dropout == 0.1
