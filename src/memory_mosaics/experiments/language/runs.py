"""The training runs of the language experiment: which runs, in which order, each a call of the
trainer in its own process (``--jobs`` at a time), with a deadline.

A run is finished when ``RUN/done.json`` exists and failed when ``RUN/failed.json`` does (e.g. it
diverged); both are kept across invocations, so re-running the experiment reuses finished runs and
resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Callable

from ...training.config import TrainConfig
from ...training.metrics import read_metrics

# v2 switches at the CPU context of 256: gated keys, adaptive bandwidth, a short-term memory over the
# last 128 pairs and a long-term one skipping m ~ U[32, 128] (32 at inference), SwiGLU persistent
# memory (spec section 5 uses h = 256, m in [64, 256] at contexts of thousands of tokens).
V2_ARGS = {
    "key_extractor": "gated",
    "bandwidth": "adaptive",
    "short_term_window": 128,
    "long_term_skip_min": 32,
    "long_term_skip_max": 128,
    "persistent": "swiglu",
}


class Run:
    """One training run: a kind ("mosaic", "gpt" or "mosaic-v2"), a depth, a folder, and the
    config overrides of this run (a dict, or a callable giving it once the runs it comes
    ``after`` are done)."""

    def __init__(
        self,
        kind: str,
        depth: int,
        run_dir: Path,
        overrides: dict | Callable[[], dict],
        after: tuple["Run", ...] = (),
        key: str | None = None,
    ):
        self.kind, self.depth, self.dir, self.overrides, self.after = kind, depth, run_dir, overrides, after
        self.key = key or f"{kind}-{depth}"

    @property
    def finished(self) -> bool:
        return (self.dir / "done.json").is_file()

    @property
    def failed(self) -> bool:
        return (self.dir / "failed.json").is_file()

    def config(self, base: TrainConfig) -> TrainConfig:
        """The run's TrainConfig: the experiment's base config, the kind and depth, the overrides."""
        kind = {"model": "gpt" if self.kind == "gpt" else "mosaic", "n_layer": self.depth}
        if self.kind == "mosaic-v2":
            kind["model_args"] = {**base.model_args, **V2_ARGS}
        return TrainConfig.from_dict({**kind, **self.overrides}, base)


def _train(config: dict, run_dir: str) -> None:
    """Worker process: train one run (resuming it if it has a checkpoint), output into RUN/train.log."""
    from ...training.trainer import Trainer

    log = open(Path(run_dir) / "train.log", "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    trainer = Trainer(TrainConfig.from_dict(config), run_dir, resume=True, log=print)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    print(f"done: step {summary['step']}, train loss {summary['train_loss']}, valid loss {summary['val_loss']}")


def train_all(runs: list[Run], base: TrainConfig, jobs: int, deadline: float | None = None) -> None:
    """Train every run, ``jobs`` at a time, each once the runs it comes after are done; a failed
    run is recorded and the others go on. At ``deadline`` (a ``time.time()``) the runs still going
    are stopped (their checkpoints stay) and no other starts."""
    context = multiprocessing.get_context("spawn")
    pending = [r for r in runs if not (r.finished or r.failed)]
    active: list[tuple[multiprocessing.Process, Run, float]] = []
    while pending or active:
        if deadline and time.time() > deadline:
            for proc, run, _ in active:
                proc.terminate()
                proc.join()
                print(f"[language] deadline: stopped {run.dir} (unfinished)", flush=True)
            return
        ready = [r for r in pending if all(a.finished or a.failed for a in r.after)]
        while ready and len(active) < jobs:
            run = ready.pop(0)
            pending.remove(run)
            if callable(run.overrides):
                run.overrides = run.overrides()
            run.dir.mkdir(parents=True, exist_ok=True)
            config = run.config(base)
            print(
                f"[language] training {run.key} (lr {config.lr:g}, {config.max_steps} steps) -> {run.dir}", flush=True
            )
            proc = context.Process(target=_train, args=(config.to_dict(), str(run.dir)))
            proc.start()
            active.append((proc, run, time.time()))
        if not active and pending and not ready:
            raise ValueError("a run waits for runs that cannot finish")
        time.sleep(0.5)
        for proc, run, start in list(active):
            if proc.is_alive():
                continue
            proc.join()
            active.remove((proc, run, start))
            if proc.exitcode != 0:  # e.g. diverged: recorded, and the other runs go on
                (run.dir / "failed.json").write_text(json.dumps({"exitcode": proc.exitcode}))
                print(f"[language] FAILED {run.dir} ({proc.exitcode}); see {run.dir / 'train.log'}", flush=True)
                continue
            (run.dir / "done.json").write_text(json.dumps({"wall_s": time.time() - start}))
            print(f"[language] finished {run.dir} in {time.time() - start:.0f} s", flush=True)


def final_valid_loss(run_dir: Path) -> float:
    losses = [row["loss"] for row in read_metrics(run_dir) if row["split"] == "valid"]
    if not losses:
        raise ValueError(f"{run_dir}: no validation loss was logged (the preset needs a `valid` corpus)")
    return losses[-1]


def plan_runs(
    out: Path, kinds_by_depth: dict[int, list[str]], seeds: list[int], lrs: list[float] | None, sweep_steps: int
) -> tuple[list[Run], list[Run], dict]:
    """(sweep runs, full runs, sweep record). With ``lrs``, each (kind, depth) first runs
    ``sweep_steps`` at every rate (first seed); its full runs take the rate with the lowest final
    validation loss (a failed sweep run is left out). Runs of the first seed are keyed KIND-DEPTH,
    others KIND-DEPTH-seedS."""
    sweep_runs, full_runs, record = [], [], {}
    for depth, kinds in kinds_by_depth.items():
        for kind in kinds:
            sweeps = tuple(
                Run(
                    kind,
                    depth,
                    out / "sweep" / f"{kind}-{depth}-lr{lr:g}",
                    {"lr": lr, "max_steps": sweep_steps, "seed": seeds[0]},
                )
                for lr in lrs or ()
            )
            sweep_runs += sweeps

            def choose(seed: int, kind=kind, depth=depth, sweeps=sweeps) -> dict:
                losses = {r.overrides["lr"]: final_valid_loss(r.dir) for r in sweeps if r.finished}
                failed = [r.overrides["lr"] for r in sweeps if not r.finished]
                best = min(losses, key=losses.get) if losses else None
                record[f"{kind}-{depth}"] = {
                    "valid_loss_by_lr": {f"{k:g}": v for k, v in losses.items()},
                    "failed_lrs": failed,
                    "lr": best,
                }
                (out / "sweep.json").write_text(json.dumps(record, indent=1))
                return {"seed": seed, **({"lr": best} if losses else {})}

            for i, seed in enumerate(seeds):
                key = f"{kind}-{depth}" + ("" if i == 0 else f"-seed{seed}")
                overrides = (lambda seed=seed, choose=choose: choose(seed)) if sweeps else {"seed": seed}
                full_runs.append(Run(kind, depth, out / key, overrides, sweeps, key))
    return sweep_runs, full_runs, record
