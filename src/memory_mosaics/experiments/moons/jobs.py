"""The experiment's jobs: one (seed, model) pair trained and evaluated, every pair in ``--jobs``
processes. Each job seeds its own initialisation and batches, so the jobs can run in any order and
in any process with identical results."""

from __future__ import annotations

import torch
from torch import Tensor

from ...models.moons import moons_memory
from ...training.loop import TrainingDiverged
from ..common import apply_threads, map_jobs, usable_cores
from .evaluate import evaluate
from .settings import MODELS, Settings
from .train import train


def run_model(
    seed: int, name: str, systems: dict, eval_x: Tensor, settings: Settings, threads: int = 1, progress: bool = True
) -> dict:
    """Train and evaluate one model for one seed: losses, curves, disentanglement, summary, step
    errors, weights. A divergence raises :class:`TrainingDiverged` naming the seed and the model."""
    apply_threads(threads)
    torch.manual_seed(seed)
    memory = moons_memory(MODELS[name])
    try:
        losses = train(memory, systems["train"], settings, seed, desc=f"{name} seed {seed}", progress=progress)
    except TrainingDiverged as err:
        raise TrainingDiverged(f"seed {seed}, model {name} diverged: {err}") from None
    return {
        "losses": losses,
        **evaluate(memory, systems, eval_x, settings, progress),
        "weights": {k: v.tolist() for k, v in memory.state_dict().items()},
    }


def run_models(
    seeds: list[int],
    models: list[str],
    systems: dict,
    eval_x: Tensor,
    settings: Settings,
    jobs: int | None,
    threads: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Every (seed, model) job, in ``jobs`` processes (None: one per usable core):
    [{"seed": s, "models": {name: result}}]. The first failed job stops the others still waiting."""
    pairs = [(seed, name) for seed in seeds for name in models]
    workers = min(len(pairs), jobs or usable_cores())
    if workers > 1:
        pairs.sort(key=lambda pair: -MODELS[pair[1]])  # the slower 3-head models first: shorter tail
    args = {pair: (*pair, systems, eval_x, settings, threads, progress and workers == 1) for pair in pairs}
    results = map_jobs(run_model, args, workers, progress=progress, desc="models")
    return [{"seed": seed, "models": {name: results[seed, name] for name in models}} for seed in seeds]
