"""Which RegBench runs, in which order: for every N and model, with ``--grid`` first a search over
the grid with the first seed (selection by validation loss only), then every seed with the chosen
hyper-parameters. A run already in the record (or, with ``--resume``, in the earlier one) is reused.

A run whose loss or gradient norm stops being finite (:class:`TrainingDiverged`) is reported on one
line naming the model, N and seed, and recorded in ``results.json`` with ``"diverged": REASON``; it
is left out of the summary and of the grid's choice, and the other runs go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...data.regbench import Environment
from ...training.loop import TrainingDiverged
from .results import Results
from .settings import Settings, grid_points
from .train import train_one


@dataclass
class Splits:
    train: Sequence[Environment]  # the first N of them train a model of that N
    val: Sequence[Environment]
    test: Sequence[Environment]


class Runner:
    def __init__(self, settings: Settings, splits: Splits, results: Results, device: torch.device, progress: bool):
        self.settings, self.splits, self.results = settings, splits, results
        self.device, self.progress = device, progress

    def run_all(self) -> None:
        self.results.save()
        for n in self.settings.num_train:
            for kind in self.settings.models:
                hp = dict(self.settings.hparams[kind])
                if self.settings.grid:
                    hp = self.select(kind, n, hp)
                    if hp is None:
                        continue
                for seed in self.settings.seeds:
                    self.run(kind, n, seed, hp)
        self.results.save()

    def select(self, kind: str, n: int, base: dict[str, Any]) -> dict[str, Any] | None:
        """Train every grid point with the first seed; the hyper-parameters with the best validation
        loss (None if every point diverged). The chosen point's run becomes a main run."""
        seed = self.settings.seeds[0]
        trials = []
        for point in grid_points(self.settings.grid):
            record = self.run(kind, n, seed, {**base, **point}, grid_only=True)
            trial = {"point": point, "best_val_loss": record.get("best_val_loss")}
            trials.append({**trial, "diverged": True} if record.get("diverged") else trial)
        finished = [t for t in trials if not t.get("diverged")]
        chosen = min(finished, key=lambda t: t["best_val_loss"])["point"] if finished else None
        self.results.select({"model": kind, "num_train": n, "trials": trials, "chosen": chosen})
        if chosen is None:
            print(f"{kind} N={n}: every grid point diverged; no runs with other seeds", flush=True)
            self.results.save()
            return None
        hp = {**base, **chosen}
        self.results.find(kind, n, seed, hp).pop("grid_only", None)
        self.results.save()
        return hp

    def run(self, kind: str, n: int, seed: int, hp: dict[str, Any], grid_only: bool = False) -> dict:
        """The record of this run: found in the results, reused from ``--resume``'s, or trained."""
        epochs = self.settings.epochs[n]
        found = self.results.find(kind, n, seed, hp) or self.results.reuse(kind, n, seed, hp, epochs)
        if found is not None:
            if grid_only:
                found["grid_only"] = True
            else:
                found.pop("grid_only", None)
            self.results.save()
            return found
        desc = f"{kind} N={n} seed={seed}"
        try:
            record = train_one(
                kind,
                hp,
                self.splits.train[:n],
                self.splits.val,
                self.splits.test,
                epochs,
                seed,
                self.device,
                self.progress,
                desc,
            )
        except TrainingDiverged as exc:
            print(f"{desc}: diverged ({exc}); recorded as diverged in {self.results.path}", flush=True)
            record = {
                "model": kind,
                "num_train": n,
                "seed": seed,
                "epochs": epochs,
                "hparams": dict(hp),
                "diverged": str(exc),
            }
        else:
            print(
                f"{desc}: accuracy {record['accuracy']:.3f} tvd {record['tvd']:.3f} best val "
                f"{record['best_val_loss']:.4f} (epoch {record['best_epoch']}/{record['epochs']}), "
                f"{record['params']} params, {record['train_time_s']:.0f}s",
                flush=True,
            )
        if grid_only:
            record["grid_only"] = True
        self.results.add(record)
        self.results.save()
        return record
