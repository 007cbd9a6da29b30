"""Benchmarks that score one model configuration: the probes of the ablation and sensitivity studies.

Each probe trains one model of a registered kind with config/hyper-parameter ``overrides`` on top of
an existing experiment's preset, for one seed, and returns a flat record of its scores. A probe runs
in whatever process calls it (the studies run several in ``--jobs`` processes).

* ``regbench``: the RegBench CPU preset (:mod:`.regbench.presets`) at N = 1000 training automata
  (7 epochs, 224 optimiser steps), tested on the preset's 500 test environments: ``accuracy``, ``tvd``.
* ``mqar``: MQAR (:mod:`.mqar`) at width 64, trained and tested on the hard setting: sequence
  length 256, 64 key-value pairs (:data:`MQAR_HARD`; 2,500 steps, a GPU job): ``accuracy``.
* ``language``: the language CPU preset ``cpu-d128`` for a short budget of steps:
  ``valid_loss``.

``quick=True`` shrinks each to a few seconds (tests).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from typing import Any, Callable

import torch

from .common import apply_threads

RegbenchSplits = dict[str, list]


@functools.lru_cache(maxsize=2)
def _regbench_splits(quick: bool) -> tuple[int, RegbenchSplits]:
    """(N, splits) of the preset: the first N training environments and the preset's validation ones."""
    from ..data.regbench import make_splits
    from .regbench.presets import PRESETS

    preset = PRESETS["quick" if quick else "cpu"]
    n = max(preset.num_train)
    made = make_splits(n, seed=0, num_test=preset.num_test, num_val=preset.num_val if quick else 500)
    return n, {"train": made["train"][:n], "val": made["validation"][: preset.num_val], "test": made["test"]}


def regbench(kind: str, overrides: dict, seed: int, device: str, quick: bool = False) -> dict[str, Any]:
    from .regbench.presets import PRESETS
    from .regbench.train import train_one

    preset = PRESETS["quick" if quick else "cpu"]
    n, splits = _regbench_splits(quick)
    hp = {**preset.models[kind], **overrides}
    record = train_one(kind, hp, splits["train"], splits["val"], splits["test"], preset.epochs(n), seed, device, False)
    return {k: record[k] for k in ("accuracy", "tvd", "best_val_loss", "params", "train_time_s")} | {"num_train": n}


# The hard setting: 256 tokens, 64 key-value pairs, at width 64 (2 layers), trained on that setting
# alone: 20,000 examples (Zoology's count for it) for 4 epochs of batches of 32 (2,500 steps).
MQAR_HARD = {"seq_len": 256, "num_pairs": 64, "num_train": 20_000, "num_test": 500, "epochs": 4}
MQAR_QUICK = {"seq_len": 32, "num_pairs": 4, "num_train": 64, "num_test": 16, "epochs": 1}
MQAR_WIDTH = 64


def mqar(kind: str, overrides: dict, seed: int, device: str, quick: bool = False) -> dict[str, Any]:
    from .mqar.presets import PRESETS, TrainSpec, model_spec, single_setting
    from .mqar.train import train_one

    train_fields = {f.name for f in dataclasses.fields(TrainSpec)}
    spec = single_setting(
        **(MQAR_QUICK if quick else MQAR_HARD),
        lr=PRESETS["cpu"].lrs[kind],
        **{k: v for k, v in overrides.items() if k in train_fields},
    )
    base = model_spec(kind, 16 if quick else MQAR_WIDTH)
    fields = {**base.fields, **{k: v for k, v in overrides.items() if k not in train_fields}}
    record = train_one(dataclasses.replace(base, fields=fields), spec, seed, device)
    return {k: record[k] for k in ("accuracy", "params", "steps", "train_time_s", "final_train_loss")}


LANGUAGE_CONFIG = "cpu-d128"  # a packaged preset (memory_mosaics/configs)
LANGUAGE_STEPS = 600  # the short budget of the language probe (of the config's 2000)


def language(kind: str, overrides: dict, seed: int, device: str, quick: bool = False) -> dict[str, Any]:
    from ..training.config import TrainConfig
    from ..training.trainer import Trainer

    steps = 4 if quick else LANGUAGE_STEPS
    run = {"model": kind, "seed": seed, "device": str(device), "threads": 0, "progress": False, "max_steps": steps}
    run |= {"eval_interval": steps, "checkpoint_interval": steps, "warmup": min(100, steps // 6)}
    if quick:
        run |= {"n_layer": 1, "eval_windows": 2, "batch_size": 2, "context": 32}
    config = TrainConfig.from_dict({**run, **overrides}, TrainConfig.from_file(LANGUAGE_CONFIG))
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, out, log=lambda *a, **k: None)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
        params = trainer.model.num_params()
    return {"valid_loss": summary["val_loss"], "train_loss": summary["train_loss"], "steps": steps, "params": params}


PROBES: dict[str, Callable[..., dict[str, Any]]] = {"regbench": regbench, "mqar": mqar, "language": language}


def run_probe(
    probe: str, kind: str, overrides: dict, seed: int, device: str, threads: int, quick: bool
) -> dict[str, Any]:
    """One job of a study (a worker process may run it): the probe's record, or ``{"diverged": why}``."""
    from ..training.loop import TrainingDiverged

    apply_threads(threads)
    try:
        return PROBES[probe](kind, overrides, seed, torch.device(device), quick)
    except TrainingDiverged as err:
        return {"diverged": str(err)}


def key_of(*parts: Any) -> str:
    """A stable text key of a job (its probe, model, overrides and seed)."""
    return json.dumps(parts, sort_keys=True)
