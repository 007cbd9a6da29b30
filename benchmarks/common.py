"""Helpers for the benchmark scripts: min-of-k timing and the benchmark model sizes."""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM

# The size named by the core-library issue: n_layer 4, n_head 4, d 256, vocab 8192.
SIZE = dict(vocab_size=8192, n_layer=4, n_head=4, n_embd=256)


def mosaic(**kw) -> MosaicLM:
    return MosaicLM(MosaicConfig(**{**SIZE, "dropout": 0.0, "attn_dropout": 0.0, **kw}))


def gpt(block_size: int, **kw) -> GPTLM:
    return GPTLM(GPTConfig(**{**SIZE, "block_size": block_size, "dropout": 0.0, **kw}))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (else argparse's one-line error and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (else argparse's one-line error and exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a dropout probability in [0, 1) (else argparse's one-line error and exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def json_out(text: str) -> Path:
    """argparse type: a file to write results to, checked before the run (not after minutes of it):
    its folder must exist and the path must not be a folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"folder {path.parent} does not exist")
    return path


def best_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (CPU timings are noisy: report the min)."""
    for _ in range(warmup):
        fn()
    return min(alternated({"fn": fn}, repeats)["fn"])


def alternated(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Wall time of each of ``runs`` (name -> callable) in each of ``repeats`` rounds, the runs
    alternating within a round: this machine's speed drifts by 10-20% within minutes, and a model
    timed only in a slow phase would look slower. Returns name -> list of ``repeats`` times (s)."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Ratio:
    """Time of run a over time of run b, from rounds where the two alternated.

    ``of_mins``: min(a) / min(b), the figure the tables report; ``median``, ``low``, ``high``: the
    median and range of the per-round ratios a_i / b_i. The two runs of a round are seconds apart, so
    the per-round ratios cancel drift slower than that; their spread is the measurement's noise."""

    of_mins: float
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, a: list[float], b: list[float]) -> Ratio:
        if len(a) != len(b) or not a:
            raise ValueError(f"need the same number (>= 1) of rounds for both runs, got {len(a)} and {len(b)}")
        per_round = [x / y for x, y in zip(a, b)]
        return cls(min(a) / min(b), statistics.median(per_round), min(per_round), max(per_round))

    def __str__(self) -> str:
        return f"{self.of_mins:.2f} (per-round ratios: median {self.median:.2f}, range {self.low:.2f}-{self.high:.2f})"


def header(title: str) -> None:
    print(f"\n== {title} (torch {torch.__version__}, {torch.get_num_threads()} threads) ==")
