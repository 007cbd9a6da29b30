"""Helpers for the benchmark scripts: min-of-k timing and the benchmark model sizes."""

from __future__ import annotations

import argparse
import math
import time

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


def best_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (CPU timings are noisy: report the min)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def header(title: str) -> None:
    print(f"\n== {title} (torch {torch.__version__}, {torch.get_num_threads()} threads) ==")
