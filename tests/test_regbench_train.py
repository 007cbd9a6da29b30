"""Tests of the RegBench training / evaluation experiment and the ``mosaics regbench`` command."""

import argparse
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from memory_mosaics.cli import main
from memory_mosaics.data.regbench import PAD, SPLITS, make_splits, read_jsonl
from memory_mosaics.eval.regbench import evaluate, evaluate_predictor, true_next_distributions
from memory_mosaics.experiments.regbench import add_arguments, presets, train
from memory_mosaics.experiments.regbench.presets import BATCH_SIZE, BLOCK_SIZE, PRESETS, PROTOCOL
from memory_mosaics.experiments.regbench.settings import resolve
from memory_mosaics.models.gpt import GPTLM, GPTConfig
from memory_mosaics.models.registry import REGISTRY


@pytest.fixture(scope="module")
def envs():
    return make_splits(0, seed=3, num_test=12, num_val=0)["test"]


class _TableModel(torch.nn.Module):
    """Returns given per-environment distributions as logits (log p), looked up by the prompt."""

    def __init__(self, envs, predict):
        super().__init__()
        self.table = {tuple(env.tokens[:-1]): predict(env) for env in envs}

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 20, dtype=torch.float64)
        for row, tokens in enumerate(idx.tolist()):
            length = sum(1 for t in tokens if t != PAD)  # PAD never occurs inside a prompt
            probs = torch.as_tensor(self.table[tuple(tokens[:length])])
            logits[row, :length] = probs.log()
        return logits


def test_true_distribution_model_is_perfect(envs):
    model = _TableModel(envs, lambda env: true_next_distributions(env.automaton, env.tokens))
    scores = evaluate(model, envs, batch_size=5)
    assert scores["accuracy"] == 1.0
    assert scores["tvd"] == pytest.approx(0.0, abs=1e-9)
    assert scores["positions"] == sum(len(env.tokens) - 1 for env in envs)
    # the loss is the cross-entropy of the true distribution on the letter labels: finite, positive
    assert 0.0 < scores["loss"] < np.log(3) + 1e-9


def test_evaluation_pools_like_the_metrics_module(envs):
    def predict(env):
        rng = np.random.default_rng(len(env.tokens))
        p = rng.random((len(env.tokens) - 1, 20))
        return p / p.sum(axis=1, keepdims=True)

    model = _TableModel(envs, predict)
    ours = evaluate(model, envs, batch_size=5)
    reference = evaluate_predictor(envs, predict)
    for key in ("accuracy", "tvd", "l1"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-9)


def test_cpu_preset_models_have_equal_block_weights():
    hp = PRESETS["cpu"].models
    mosaic, gpt = train.build_model("mosaic", hp["mosaic"]), train.build_model("gpt", hp["gpt"])

    def block_weights(model):
        return sum(p.numel() for name, p in model.named_parameters() if name.startswith("blocks") and p.dim() >= 2)

    assert block_weights(mosaic) == block_weights(gpt) == 2 * 12 * 64**2
    assert gpt.num_params() - mosaic.num_params() < BLOCK_SIZE * 64 + 1000


def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "regbench", "--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"settings", "generator_stats", "baselines", "published", "runs", "summary"} <= set(results)
    assert results["baselines"]["oracle"]["accuracy"] == 1.0
    assert {r["model"] for r in results["runs"]} == {"mosaic", "gpt"}
    for run in results["runs"]:
        for key in ("accuracy", "tvd", "best_val_loss", "params", "train_time_s", "num_train", "seed", "history"):
            assert key in run
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["tvd"] <= 1.0
        assert run["best_val_loss"] == min(h["val_loss"] for h in run["history"])
        assert run["steps"] == run["epochs"] * -(-run["num_train"] // BATCH_SIZE)
    assert set(results["summary"]) == {"mosaic", "gpt"}
    assert results["settings"]["protocol"] == json.loads(json.dumps(PROTOCOL))
    assert results["settings"]["protocol"]["betas"] == [0.9, 0.999]
    assert (out / "figure9.png").stat().st_size > 1000

    # --resume reuses the finished runs instead of training again
    assert main(["reproduce", "regbench", "--quick", "--out", str(out), "--no-progress", "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in results["runs"]]
    assert [r["train_time_s"] for r in again["runs"]] == [r["train_time_s"] for r in results["runs"]]

    # ... but not runs trained under another protocol
    again["settings"]["protocol"]["betas"] = [0.9, 0.95]
    (out / "results.json").write_text(json.dumps(again))
    assert main(["reproduce", "regbench", "--quick", "--out", str(out), "--no-progress", "--resume"]) == 0
    assert "another protocol" in capsys.readouterr().out
    third = json.loads((out / "results.json").read_text())
    assert third["settings"]["protocol"]["betas"] == [0.9, 0.999]
    assert [r["train_time_s"] for r in third["runs"]] != [r["train_time_s"] for r in results["runs"]]


def test_quick_grid_selects_on_validation(tmp_path):
    out = tmp_path / "grid"
    argv = ["reproduce", "regbench", "--quick", "--models", "mosaic", "--grid", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    (selection,) = results["selection"]
    best = min(selection["trials"], key=lambda t: t["best_val_loss"])
    assert selection["chosen"] == best["point"]
    assert len(results["runs"]) == len(PRESETS["quick"].grid["lr"])
    main_runs = [r for r in results["runs"] if not r.get("grid_only")]
    assert len(main_runs) == 1 and main_runs[0]["hparams"]["lr"] == best["point"]["lr"]


def test_data_command_writes_three_splits(tmp_path, capsys):
    path = tmp_path / "envs.jsonl"
    argv = [
        "regbench",
        "data",
        "--num-train",
        "7",
        "--num-test",
        "5",
        "--num-val",
        "4",
        "--seed",
        "2",
        "--out",
        str(path),
    ]
    assert main(argv) == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 16
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"split", "automaton", "tokens"} for r in records)
    splits = read_jsonl(path)
    assert {name: len(splits[name]) for name in SPLITS} == {"test": 5, "validation": 4, "train": 7}
    expected = make_splits(7, seed=2, num_test=5, num_val=4)
    assert [e.tokens for e in splits["train"]] == [e.tokens for e in expected["train"]]
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"test": 5, "validation": 4, "train": 7}


@pytest.mark.parametrize(
    "argv",
    [
        ["regbench", "data", "--num-train", "-3", "--out", "OUT"],
        ["regbench", "data", "--num-train", "3", "--out", "MISSING/envs.jsonl"],
        ["regbench", "data", "--num-train", "abc", "--out", "OUT"],
        ["regbench", "baselines", "--num-envs", "0"],
        ["reproduce", "regbench", "--quick", "--models", "lstm", "--out", "OUT"],
        ["reproduce", "regbench", "--quick", "--num-train", "0", "--out", "OUT"],
        ["reproduce", "regbench", "--quick", "--grid-spec", "colour=red", "--out", "OUT"],
    ],
)
def test_bad_input_exits_2(tmp_path, argv, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out.jsonl")).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_baselines_command(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert main(["regbench", "baselines", "--num-envs", "10", "--max-order", "3", "--out", str(path)]) == 0
    report = json.loads(path.read_text())
    assert set(report["scores"]) == {"1-gram", "2-gram", "3-gram", "oracle"}
    assert report["scores"]["oracle"]["tvd"] == 0.0
    assert json.loads(capsys.readouterr().out) == report


def test_timm_cosine_schedule_hand_computed():
    # timm CosineLRScheduler(t_initial=100, lr_min=1e-4, warmup_t=10, warmup_lr_init=1e-6,
    # warmup_prefix=False), base lr 1e-3; values worked out by hand
    def lr(step):
        return train.timm_cosine_lr(step, 1e-3, total=100, warmup=10, lr_min=1e-4, warmup_lr_init=1e-6)

    assert lr(0) == pytest.approx(1e-6, rel=1e-12)  # the first step runs at warmup_lr_init
    assert lr(5) == pytest.approx(5.005e-4, rel=1e-12)  # 1e-6 + 5 * 0.999e-3 / 10
    assert lr(9) == pytest.approx(9.001e-4, rel=1e-12)  # 1e-6 + 9 * 0.999e-4: never the peak itself
    # end of warm-up: the cosine clock started at 0, cos(pi / 10) = 0.9510565163
    assert lr(10) == pytest.approx(1e-4 + 4.5e-4 * 1.9510565163, rel=1e-9)  # 9.7797543e-4
    assert lr(10) / 1e-3 == pytest.approx(0.978, abs=5e-4)
    assert lr(50) == pytest.approx(5.5e-4, rel=1e-12)  # cos(pi / 2) = 0
    assert lr(75) == pytest.approx(1e-4 + 4.5e-4 * (1 - 0.7071067812), rel=1e-9)
    assert lr(99) == pytest.approx(1e-4 + 4.5e-4 * (1 - 0.9995065604), rel=1e-9)
    # t >= t_initial: one cycle only (cycle_limit 1), lr_min from then on
    assert lr(100) == lr(101) == lr(1000) == 1e-4
    # the harness's warm-up: ceil(epochs / 10) epochs, exactly 10% of the steps at 200 epochs
    assert train.warmup_steps(4, 200) == 80 and train.warmup_steps(32, 200) == 640
    assert train.warmup_steps(4, 56) == 24 and train.warmup_steps(32, 7) == 32


@pytest.mark.parametrize("kind", ["mosaic", "gpt"])
@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_harness_optimizer_decays_every_parameter(kind, preset):
    hp = PRESETS[preset].models[kind]
    model = train.build_model(kind, hp)
    optimizer = train.build_harness_optimizer(model, hp["lr"], hp["weight_decay"])
    decayed = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == hp["weight_decay"] > 0 for p in g["params"]
    }
    named = dict(model.named_parameters())
    assert decayed == {id(p) for p in named.values()}
    assert all(g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)
    # the tensors a ">= 2 dims" rule would have spared are decayed too
    norms = [n for n, p in named.items() if ".ln_" in n and p.dim() == 1]
    vectors = [n for n, p in named.items() if n.startswith("blocks") and p.dim() == 1 and ".ln_" not in n]
    assert norms and all(id(named[n]) in decayed for n in norms)
    if kind == "mosaic":  # the per-head scalars (bandwidths, leaky-average and value weights)
        assert vectors and all(named[n].numel() == hp["n_head"] for n in vectors)
        assert all(id(named[n]) in decayed for n in vectors)


@pytest.mark.parametrize("preset,retrieval", [("paper", 0.05), ("cpu", 0.0)])
def test_mosaic_retrieval_dropout_in_both_memories(preset, retrieval):
    # the harness's regular model: ic_dropout 0.05 on both memories' retrieval weights (paper);
    # the CPU preset drops it in both, for speed (docs/regbench.md)
    model = train.build_model("mosaic", PRESETS[preset].models["mosaic"])
    assert all(block.cmem.attn_dropout == block.pmem.attn_dropout == retrieval for block in model.blocks)
    assert model.config.dropout == 0.05


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_and_preset_defaults():
    args = _args()
    assert (args.out, args.threads, args.device, args.progress) == ("runs/regbench", 0, "auto", True)
    settings = resolve(args)
    assert settings.seeds == [0, 1] and settings.num_train == [100, 500, 1000] and settings.models == ["mosaic", "gpt"]
    # the CPU preset: the same 224 optimiser steps at every N
    assert settings.epochs == {100: 56, 500: 14, 1000: 7}
    assert resolve(_args("--quick")).seeds == [0]
    settings = resolve(_args("--seeds", "3", "0-1", "--num-train", "64", "2500", "--models", "gpt", "--no-progress"))
    assert settings.seeds == [3, 0, 1] and settings.num_train == [64, 2500] and settings.models == ["gpt"]
    assert settings.epochs == {64: 112, 2500: 3}  # 224 / 2 and round(224 / 79)
    assert resolve(_args("--num-train", "64", "--epochs", "5")).epochs == {64: 5}
    assert resolve(_args("--preset", "paper", "--num-train", "123")).epochs == {123: 200}
    assert all(presets.steps_per_epoch(n) * e == 224 for n, e in {100: 56, 500: 14, 1000: 7}.items())


@dataclass
class _EchoGPTConfig(GPTConfig):
    model_type = "gpt"


class _EchoGPT(GPTLM):
    config_class = _EchoGPTConfig


def test_models_are_built_through_the_registry(monkeypatch):
    monkeypatch.setitem(REGISTRY, "gpt", (_EchoGPTConfig, _EchoGPT))
    model = train.build_model("gpt", PRESETS["quick"].models["gpt"])
    assert type(model) is _EchoGPT and type(model.config) is _EchoGPTConfig
    assert (model.config.block_size, model.config.vocab_size, model.config.n_embd) == (BLOCK_SIZE, 20, 16)


def _diverging(monkeypatch, diverges):
    """Make the models for which ``diverges(kind, hp)`` holds return a NaN training loss."""
    build = train.build_model

    def build_model(kind, hp):
        model = build(kind, hp)
        if diverges(kind, hp):
            loss = model.loss
            model.loss = lambda logits, targets: loss(logits, targets) * float("nan")
        return model

    monkeypatch.setattr(train, "build_model", build_model)


def test_a_diverged_run_is_reported_and_recorded(tmp_path, monkeypatch, capsys):
    _diverging(monkeypatch, lambda kind, hp: kind == "gpt")
    out = tmp_path / "run"
    assert main(["reproduce", "regbench", "--quick", "--out", str(out), "--no-progress", "--seeds", "0", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "diverged (" in line and "seed=" in line]
    assert lines == [
        f"gpt N=16 seed={s}: diverged (loss is nan at step 1); recorded as diverged in {out / 'results.json'}"
        for s in (0, 1)
    ]
    results = json.loads((out / "results.json").read_text())
    diverged = [r for r in results["runs"] if r.get("diverged")]
    assert [(r["model"], r["num_train"], r["seed"], r["diverged"]) for r in diverged] == [
        ("gpt", 16, 0, "loss is nan at step 1"),
        ("gpt", 16, 1, "loss is nan at step 1"),
    ]
    assert set(results["summary"]) == {"mosaic"}  # diverged runs stay out of the summary
    assert results["summary"]["mosaic"]["16"]["seeds"] == [0, 1]

    # --resume keeps them as they are instead of training again
    assert (
        main(["reproduce", "regbench", "--quick", "--out", str(out), "--no-progress", "--seeds", "0", "1", "--resume"])
        == 0
    )
    assert "reused" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["runs"] == results["runs"]


def test_the_grid_skips_diverged_points(tmp_path, monkeypatch):
    _diverging(monkeypatch, lambda kind, hp: (kind == "mosaic" and hp["lr"] == 2e-3) or kind == "gpt")
    out = tmp_path / "grid"
    assert main(["reproduce", "regbench", "--quick", "--grid", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    mosaic, gpt = results["selection"]
    assert mosaic["chosen"] == {"lr": 1e-3} and [t.get("diverged", False) for t in mosaic["trials"]] == [False, True]
    assert gpt["chosen"] is None and all(t["diverged"] for t in gpt["trials"])
    assert [(r["model"], r["hparams"]["lr"]) for r in results["runs"] if not r.get("grid_only")] == [("mosaic", 1e-3)]
    assert set(results["summary"]) == {"mosaic"}
