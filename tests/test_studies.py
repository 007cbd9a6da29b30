"""The ablation and sensitivity studies: their jobs, summaries and tables, end to end in quick mode."""

import json
import math

import pytest

from memory_mosaics import MosaicConfig
from memory_mosaics.cli import main
from memory_mosaics.experiments import ablations, sensitivity
from memory_mosaics.experiments.common import map_jobs
from memory_mosaics.experiments.studies import summarise


def test_every_ablation_is_a_valid_config_switch_and_differs_from_the_reference():
    base = dict(vocab_size=20, n_layer=2, n_head=4, n_embd=64)
    reference = MosaicConfig(**base)
    seen = set()
    for name, (_, _, overrides) in ablations.ABLATIONS.items():
        config = MosaicConfig(**{**base, **overrides})
        assert (config == reference) == (name == "reference")
        key = json.dumps(overrides, sort_keys=True)
        assert key not in seen
        seen.add(key)


def test_summarise_means_spreads_and_divergences():
    runs = [
        {"probe": "p", "ablation": "a", "seed": 0, "accuracy": 0.5},
        {"probe": "p", "ablation": "a", "seed": 1, "accuracy": 0.7},
        {"probe": "p", "ablation": "a", "seed": 2, "diverged": "nan loss"},
        {"probe": "p", "ablation": "b", "seed": 0, "accuracy": 0.25},
    ]
    a, b = summarise(runs, ("probe", "ablation"), ("accuracy", "tvd"))
    assert (a["n"], a["diverged"], a["seeds"]) == (2, 1, [0, 1])
    assert a["accuracy_mean"] == pytest.approx(0.6) and a["accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(a["tvd_mean"])
    assert (b["n"], b["accuracy_mean"], b["accuracy_std"]) == (1, 0.25, 0.0)


def test_ablation_table_reports_deltas_against_the_reference():
    rows = [
        {"probe": "mqar", "ablation": "reference", "n": 2, "accuracy_mean": 0.9, "accuracy_std": 0.01},
        {"probe": "mqar", "ablation": "peek-off", "n": 2, "accuracy_mean": 0.4, "accuracy_std": 0.1},
        {"probe": "mqar", "ablation": "pmem-mlp", "n": 0, "accuracy_mean": math.nan, "accuracy_std": 0.0},
    ]
    lines = ablations.table(rows)
    assert lines[0] == "| ingredient | setting | mqar accuracy | seeds |"
    assert "| 0.900 ± 0.010 | 2 |" in lines[2]
    assert "0.400 ± 0.100 (-0.500)" in lines[3]
    assert "diverged" in lines[4]


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise RuntimeError("three")
    return x


@pytest.mark.parametrize("workers", [1, 2])
def test_map_jobs_returns_every_result_and_reports_each(workers):
    seen = []
    out = map_jobs(square, {k: (k,) for k in range(5)}, workers, on_result=lambda k, r: seen.append(k), progress=False)
    assert out == {k: k * k for k in range(5)} and sorted(seen) == list(range(5))
    with pytest.raises(RuntimeError, match="three"):
        map_jobs(fail_on_three, {k: (k,) for k in range(5)}, workers, progress=False)


def test_ablations_quick_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["reproduce", "ablations", "--quick", "--no-progress", "--threads", "1", "--out", str(out)]
    argv += ["--probes", "regbench", "--ablations", "peek-off", "--seeds", "0"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert [(r["ablation"], r["seed"]) for r in data["runs"]] == [("reference", 0), ("peek-off", 0)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["tvd"] <= 1.0 for r in data["runs"])
    table = (out / "ablations.md").read_text().splitlines()
    assert len(table) == 4 and table[3].startswith("| value peek | off")
    capsys.readouterr()
    assert main(argv) == 2  # an earlier study's record is never overwritten without --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert "2 jobs reused, 0 to run" in capsys.readouterr().out
    (out / "ablations.md").unlink()
    assert main([*argv, "--replot"]) == 0
    assert (out / "ablations.md").read_text().splitlines() == table


def test_sensitivity_quick_sweeps_around_the_presets_rates(tmp_path):
    out = tmp_path / "sens"
    argv = ["reproduce", "sensitivity", "--quick", "--no-progress", "--threads", "1", "--out", str(out)]
    argv += ["--probes", "regbench", "--models", "mosaic", "--lr-factors", "0.5", "1", "--weight-decays", "0.01"]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    base = sensitivity.base_hparams("regbench", "mosaic", quick=True)
    points = sorted((r["sweep"], r["overrides"]["lr"], r["overrides"]["weight_decay"]) for r in data["runs"])
    assert points == sorted(
        [("lr", base["lr"] / 2, base["weight_decay"]), ("lr", base["lr"], base["weight_decay"])]
        + [("weight_decay", base["lr"], 0.01)]
    )
    sweeps = {(s["sweep"]) for s in data["spreads"]}
    assert sweeps == {"lr", "weight_decay"}  # the reference point joins the weight-decay sweep


@pytest.mark.parametrize("argv", [["--jobs", "0"], ["--lr-factors", "nan"], ["--weight-decays", "-1"]])
def test_sensitivity_rejects_bad_numbers(tmp_path, capsys, argv):
    assert main(["reproduce", "sensitivity", "--quick", "--out", str(tmp_path / "s"), *argv]) == 2
    assert capsys.readouterr().err.startswith("mosaics: error:")
