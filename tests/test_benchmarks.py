"""The CPU benchmark scripts' shared timing helpers (hand-computed cases), and the two comparison
scripts run end to end at tiny sizes with their JSON checked. No timing is asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
common = sys.modules["benchmarks_common"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
Ratio, alternated = common.Ratio, common.alternated


def test_ratio_of_hand_computed_rounds():
    r = Ratio.of([2.0, 3.0, 4.0, 1.0], [1.0, 2.0, 2.0, 2.0])  # per round: 2, 1.5, 2, 0.5
    assert r.of_mins == pytest.approx(1.0 / 1.0)
    assert (r.median, r.low, r.high) == (pytest.approx(1.75), 0.5, 2.0)
    assert str(r) == "1.00 (per-round ratios: median 1.75, range 0.50-2.00)"


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([], [])])
def test_ratio_needs_paired_rounds(a, b):
    with pytest.raises(ValueError, match="same number"):
        Ratio.of(a, b)


def test_alternated_runs_each_once_per_round_in_turn():
    calls = []
    times = alternated({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3] and all(x >= 0 for t in times.values() for x in t)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )


def test_bench_train_step_alternates_and_writes_json(tmp_path):
    out = tmp_path / "train.json"
    run = _run("bench_train_step.py", "--T", "8", "--batch", "1", "--repeats", "2", "--dropout", "0",
               "--precision", "fp32", "--json", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = json.loads(out.read_text())["runs"]
    assert (row["T"], row["dropout"], row["precision"]) == (8, 0.0, "fp32")
    assert [len(row["seconds"][m]) for m in ("mosaic", "gpt")] == [2, 2]
    ratio = row["tokens_per_s_ratio"]
    assert ratio["of_mins"] == pytest.approx(min(row["seconds"]["gpt"]) / min(row["seconds"]["mosaic"]))
    assert ratio["low"] <= ratio["median"] <= ratio["high"]
    assert "mosaic / gpt tokens/s ratio" in run.stdout
    bad = _run("bench_train_step.py", "--T", "0")
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr


def test_bench_decode_alternates_and_writes_json(tmp_path):
    out = tmp_path / "decode.json"
    run = _run("bench_decode.py", "--prompt", "8", "--new", "4", "--batch", "1", "--repeats", "2", "--json", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    timed, recompute = json.loads(out.read_text())["runs"]
    assert (timed["batch"], timed["compiled"]) == (1, False)
    ratio = timed["ratio"]
    assert ratio["of_mins"] == pytest.approx(min(timed["seconds"]["mosaic"]) / min(timed["seconds"]["gpt"]))
    assert recompute["speedup"] > 0


def test_bench_block_parts_products_count_each_parts_flops():
    run = _run("bench_block_parts.py", "--T", "64", "--batch", "2", "--repeats", "1", "--rounds", "1", "--products")
    assert run.returncode == 0, run.stderr[-2000:]
    floors = {line.split()[0]: line.split()[-2] for line in run.stdout.splitlines() if "products' floor" in line}
    # M = 128 tokens, d 256, 4 heads of 64, a bank of 896 pairs; a product a @ b costs 2 * a.numel() * b's columns
    M, d = 128, 256
    pmem = 2 * 3 * 2 * M * d * d + 6 * 2 * 4 * M * 64 * 896  # W_phi and W_o, and the read's six products
    expected = {"C-mem": 3 * 3 * 2 * M * d * d, "P-mem": pmem, "attention": 3 * 2 * M * d * 4 * d,
                "MLP": 6 * 2 * M * d * 4 * d}  # fmt: skip
    assert floors == {name: f"{flop / 1e9:.2f}" for name, flop in expected.items()}


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("bench_train_step.py", ["--dropout", "nan"], "must be in [0, 1)"),
        ("bench_train_step.py", ["--dropout", "1"], "must be in [0, 1)"),
        ("bench_block_parts.py", ["--dropout", "-0.1"], "must be in [0, 1)"),
        ("bench_block_parts.py", ["--dropout", "x"], "not a number"),
        ("bench_decode.py", ["--json", "/nonexistent-folder/out.json"], "does not exist"),
        ("bench_train_step.py", ["--json", "."], "is a folder"),
    ],
)
def test_bad_options_give_one_line_errors_before_any_run(script, args, message):
    run = _run(script, *args)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]


def test_best_time_is_the_minimum_after_the_warmup():
    calls = []
    assert common.best_time(lambda: calls.append(1), repeats=4, warmup=2) >= 0
    assert len(calls) == 6
