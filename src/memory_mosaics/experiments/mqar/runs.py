"""Which MQAR runs, in which order: for every width, model and seed one training run (on the
preset's mixture) tested on every test setting. A run already in ``--resume``'s record is reused; a
run that diverges is reported on one line, recorded with ``"diverged": REASON`` and left out of the
summary, and the others go on."""

from __future__ import annotations

import dataclasses
import json

import torch

from ...training.loop import TrainingDiverged
from .presets import model_spec
from .results import Results
from .settings import Settings
from .train import train_one


def run_all(settings: Settings, results: Results, device: torch.device, progress: bool) -> None:
    results.save()
    for width in settings.widths:
        for model in settings.models:
            for seed in settings.seeds:
                run(model, width, seed, settings, results, device, progress)


def run(
    model: str, width: int, seed: int, settings: Settings, results: Results, device: torch.device, progress: bool
) -> dict:
    spec, train = model_spec(model, width), settings.spec(model)
    # the key as results.json stores it (tuples become lists)
    key = json.loads(
        json.dumps(
            {
                "model": model,
                "width": width,
                "seed": seed,
                "model_spec": dataclasses.asdict(spec),
                "train": train.to_json(),
            }
        )
    )
    found = results.reuse(key)
    if found is not None:
        print(f"{model} d={width} seed={seed}: reused from {results.path}", flush=True)
        return found
    desc = f"{model} d={width} seed={seed}"
    try:
        record = {**key, **train_one(spec, train, seed, device, progress, desc)}
    except TrainingDiverged as exc:
        print(f"{desc}: diverged ({exc}); recorded as diverged in {results.path}", flush=True)
        record = {**key, "diverged": str(exc)}
    else:
        accs = " ".join(f"{name} {acc:.3f}" for name, acc in record["by_setting"].items())
        print(f"{desc}: {accs} ({record['params']} params, {record['train_time_s']:.0f}s)", flush=True)
    results.add(record)
    return record
