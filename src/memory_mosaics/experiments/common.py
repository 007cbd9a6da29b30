"""What every experiment shares: its command-line flags (defined once, the same everywhere), the
device and thread settings they name, and a guarded import of matplotlib.

Flags (``add_common_arguments``):

    --seeds S [S ...]     seeds as a list; ``A-B`` is a range (``--seeds 0-4`` = ``--seeds 0 1 2 3 4``)
    --models M [M ...]    which models (choices per experiment)
    --out DIR             output folder (default ``runs/<experiment>``)
    --threads N           torch CPU threads per process (0: PyTorch's default)
    --device D            auto | cpu | cuda | cuda:N
    --progress / --no-progress
    --quick               a tiny end-to-end run (tests)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Hashable, Sequence

import torch
from tqdm.auto import tqdm

from ..plotting import pyplot
from ..training.distributed import resolve_device

__all__ = [
    "add_common_arguments",
    "apply_threads",
    "check_threads",
    "map_jobs",
    "pyplot",
    "resolve_device",
    "seed_list",
    "seeds",
    "spread",
    "usable_cores",
]


MAX_SEED = 2**32 - 1  # what every generator takes (numpy's legacy seeding included)
MAX_SEEDS = 10_000  # seeds in one range


def seed_list(text: str) -> list[int]:
    """``"3"`` -> [3]; ``"0-4"`` -> [0, 1, 2, 3, 4] (an argparse type)."""
    first, dash, last = text.partition("-")
    try:
        lo, hi = int(first), int(last) if dash else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed or a range A-B of seeds: {text!r}") from None
    if lo < 0 or hi < lo or hi > MAX_SEED or hi - lo >= MAX_SEEDS:
        raise argparse.ArgumentTypeError(
            f"seeds must be in [0, {MAX_SEED}]; a range A-B needs A <= B, at most {MAX_SEEDS} seeds; got {text!r}"
        )
    return list(range(lo, hi + 1))


def add_common_arguments(
    parser: argparse.ArgumentParser,
    name: str,
    models: Sequence[str],
    default_models: Sequence[str] | None = None,
    default_seeds: Sequence[int] | None = (0,),
    default_threads: int = 0,
) -> None:
    """The flags every experiment takes (module docstring). ``default_seeds=None``: the experiment
    picks them (``args.seeds`` is None unless given)."""
    seeds_default = None if default_seeds is None else [list(default_seeds)]
    shown = "the preset's" if default_seeds is None else " ".join(map(str, default_seeds))
    parser.add_argument(
        "--seeds",
        type=seed_list,
        nargs="+",
        default=seeds_default,
        metavar="S",
        help=f"seeds, e.g. 0 1 2 or 0-4 (default: {shown})",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=list(models),
        default=list(default_models or models),
        help="models to run (default: %(default)s)",
    )
    parser.add_argument("--out", default=f"runs/{name}", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help="torch CPU threads per process, 0 = PyTorch's default (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars (default: on)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny end-to-end run (tests)")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof 1; 0 for one value), min and max of a non-empty list, e.g. a
    metric over seeds."""
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    std = float(x.std(correction=1)) if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "min": float(x.min()), "max": float(x.max())}


def seeds(args: argparse.Namespace) -> list[int]:
    """The seeds of ``--seeds``, flattened, in order, without repeats."""
    out: list[int] = []
    for group in args.seeds:
        out += [s for s in group if s not in out]
    return out


def check_threads(threads: int) -> None:
    """``--threads`` in [0, the machine's CPUs] (0: PyTorch's default)."""
    from ..training.config import max_threads

    if not 0 <= threads <= max_threads():
        raise ValueError(f"--threads must be in [0, {max_threads()}] (the machine's CPUs), got {threads}")


def apply_threads(threads: int) -> None:
    """Set this process's torch CPU threads (0: leave PyTorch's default)."""
    check_threads(threads)
    if threads:
        torch.set_num_threads(threads)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def map_jobs(
    fn: Callable[..., Any],
    jobs: dict[Hashable, tuple],
    workers: int,
    on_result: Callable[[Hashable, Any], None] | None = None,
    progress: bool = True,
    desc: str = "jobs",
) -> dict[Hashable, Any]:
    """``{key: fn(*args)}`` for every ``key: args`` of ``jobs``, in ``workers`` processes (spawned;
    1: in this process, in order). ``on_result(key, result)`` runs in this process as each job ends
    (e.g. to save it). The first failed job re-raises here and cancels the jobs still waiting."""
    results: dict[Hashable, Any] = {}

    def done(key, result):
        results[key] = result
        if on_result is not None:
            on_result(key, result)

    workers = max(1, min(workers, len(jobs)))
    if workers == 1:
        for key, args in jobs.items():
            done(key, fn(*args))
        return results
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, *args): key for key, args in jobs.items()}
        try:
            for future in tqdm(
                as_completed(futures), total=len(futures), desc=f"{desc} ({workers} processes)", disable=not progress
            ):
                done(futures[future], future.result())  # re-raise a failed job at once
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
