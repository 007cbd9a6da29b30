"""The experiment's jobs: one (seed, model) pair trained and evaluated, every pair in ``--jobs``
processes. Each job seeds its own initialisation and batches, so the jobs can run in any order and
in any process with identical results."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from torch import Tensor
from tqdm import tqdm

from ...models.moons import moons_memory
from ...training.loop import TrainingDiverged
from ..common import apply_threads
from .evaluate import evaluate
from .settings import MODELS, Settings
from .train import train


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
    if workers == 1:
        results = {pair: run_model(*pair, systems, eval_x, settings, threads, progress) for pair in pairs}
    else:
        pairs.sort(key=lambda pair: -MODELS[pair[1]])  # the slower 3-head models first: shorter tail
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_model, *pair, systems, eval_x, settings, threads, False): pair for pair in pairs}
            try:
                done = as_completed(futures)
                for future in tqdm(done, total=len(pairs), desc=f"models ({workers} processes)", disable=not progress):
                    future.result()  # re-raise a failed job at once
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            results = {pair: future.result() for future, pair in futures.items()}
    return [{"seed": seed, "models": {name: results[seed, name] for name in models}} for seed in seeds]
