"""The GPU benchmark scripts run only where a GPU is lent, which is rare: here each runs at tiny sizes
on the CPU (``--device cpu``), so that a change elsewhere cannot break them unseen. What is checked is
that they run and write their JSON, not any timing."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=timeout
    )


def test_bench_gpu_paper_runs_each_form_isolated_and_records_a_timeout(tmp_path):
    out = tmp_path / "paper.json"
    common = ["--device", "cpu", "--depths", "1", "--modes", "eager", "--contexts", "16", "--tokens", "32"]
    run = _run("bench_gpu_paper.py", *common, "--steps", "1", "--leaky", "chunked", "scan", "--isolate", "120",
               "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["model"], r["leaky"]) for r in rows] == [("mosaic", "chunked"), ("mosaic", "scan"), ("gpt", "auto")]
    assert all(r["isolated"] and r["step_ms"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    run = _run("bench_gpu_paper.py", *common, "--models", "mosaic", "--modes", "compile", "--isolate", "0.5",
               "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["error"].startswith("killed after")


def test_bench_gpu_ops_leaky_rows_on_the_cpu(tmp_path):
    out = tmp_path / "ops.json"
    run = _run("bench_gpu_ops.py", "--device", "cpu", "--contexts", "32", "--tokens", "64", "--n-embd", "32",
               "--n-head", "2", "--parts", "leaky", "--methods", "chunked", "native", "--repeats", "1",
               "--no-compile", "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["what"] for r in rows} >= {"leaky average, chunked", "leaky average, native"}
    assert all("ms" in r for r in rows)


def test_bench_gpu_paper_refuses_bad_numbers_in_one_line():
    for option, value in (("--isolate", "0"), ("--isolate", "nan"), ("--steps", "0"), ("--budget-s", "-1")):
        run = _run("bench_gpu_paper.py", "--device", "cpu", option, value, timeout=120)
        assert run.returncode == 2, (option, value, run.stderr[-500:])
        assert run.stderr.strip().splitlines()[-1].startswith("bench_gpu_paper.py: error: argument " + option)
