"""What the ablation and sensitivity studies share: a record of jobs (``results.json``, written
atomically after every job and reused by ``--resume``), its summary over seeds, and running the
jobs of :mod:`.probes` in ``--jobs`` processes."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import atomic_write_text
from .common import map_jobs, resolve_device
from .probes import key_of, run_probe


def add_study_arguments(parser: argparse.ArgumentParser, probes: Sequence[str], default_probes: Sequence[str]) -> None:
    parser.add_argument(
        "--probes",
        nargs="+",
        choices=list(probes),
        default=list(default_probes),
        help="benchmarks each configuration is scored on (default: %(default)s)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once, each in its own process (default 1)")
    parser.add_argument("--resume", action="store_true", help="reuse the jobs already in OUT/results.json")
    parser.add_argument(
        "--replot", action="store_true", help="only rewrite the summary, table and figure from OUT/results.json"
    )


def check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")


class Study:
    """The jobs of a study and their record. A job is a dict with ``probe``, ``kind``, ``overrides``,
    ``seed`` and any labels (e.g. ``ablation``); its record adds the probe's scores."""

    def __init__(self, out: Path, header: dict[str, Any], resume: bool, replot: bool = False):
        self.path = out / "results.json"
        self.data: dict[str, Any] = {**header, "runs": []}
        self.previous: dict[str, dict] = {}
        if resume and self.path.is_file():
            self.previous = {r["key"]: r for r in self.read_runs(self.path)}
        elif self.path.exists() and not replot:  # never overwrite an earlier study's record
            raise ValueError(
                f"{self.path} holds an earlier study's results: pass --resume to reuse them, or another --out"
            )

    @staticmethod
    def read_runs(path: Path) -> list[dict]:
        """The finished jobs recorded in ``path`` (a results.json of a study)."""
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the study's results ({err}); move it away") from None
        if not isinstance(old, dict) or not isinstance(old.get("runs"), list):
            raise ValueError(f"{path} is not a results file of this study; move it away")
        return [r for r in old["runs"] if isinstance(r, dict) and "key" in r]

    def replot(self) -> list[dict]:
        """The runs of the existing record, for ``--replot`` (no job runs)."""
        if not self.path.is_file():
            raise ValueError(f"--replot: no {self.path}; run the study first")
        self.data["runs"] = self.read_runs(self.path)
        return self.data["runs"]

    def run(self, jobs: list[dict], args: argparse.Namespace) -> list[dict]:
        """Every job (reusing those in the previous record), in ``args.jobs`` processes."""
        device = str(resolve_device(args.device))
        todo = {}
        for job in jobs:
            key = key_of(job["probe"], job["kind"], job["overrides"], job["seed"])
            if key in self.previous:
                self.data["runs"].append(self.previous[key])
            else:
                todo[key] = job
        self.save()
        print(f"{len(jobs) - len(todo)} jobs reused, {len(todo)} to run on {device}", flush=True)

        def record(key: str, scores: dict) -> None:
            self.data["runs"].append({"key": key, **todo[key], **scores})
            self.save()
            job = todo[key]
            label = " ".join(str(v) for k, v in job.items() if k not in ("overrides", "kind")) or key
            shown = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items() if _is_number(v)]
            print(f"{label}: " + ", ".join(shown), flush=True)

        args_of = {
            key: (job["probe"], job["kind"], job["overrides"], job["seed"], device, args.threads, args.quick)
            for key, job in todo.items()
        }
        map_jobs(run_probe, args_of, args.jobs, on_result=record, progress=args.progress, desc="jobs")
        return self.data["runs"]

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def summarise(runs: Sequence[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per distinct value of the ``by`` fields (in first-seen order), with ``n`` finished seeds,
    ``diverged`` seeds, and for every metric its mean and spread (std, ddof 1; 0 with one seed)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(json.dumps(run.get(k), sort_keys=True) for k in by), []).append(run)
    rows = []
    for group in groups.values():
        done = [r for r in group if "diverged" not in r]
        row: dict[str, Any] = {k: group[0].get(k) for k in by}
        row |= {"n": len(done), "diverged": len(group) - len(done), "seeds": sorted(r["seed"] for r in done)}
        for m in metrics:
            values = np.array([r[m] for r in done if _is_number(r.get(m))], dtype=float)
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows
