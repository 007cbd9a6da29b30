"""The RegBench training protocol (shared by every preset) and the presets, as dataclasses.

A preset's ``epochs`` is always a function of the number of training automata N: :class:`FixedEpochs`
(the same number of epochs at every N, as in the paper) or :class:`EqualSteps` (the same number of
optimiser steps at every N, i.e. ceil(N / 32) steps per epoch times round(steps / that) epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

# Training protocol shared by every preset (docs/regbench.md, "Protocol and presets").
BATCH_SIZE = 32
WARMUP_EPOCH_DIVISOR = 10  # warm-up = ceil(epochs / 10) epochs of steps (the harness's warmup_t)
WARMUP_START_LR = 1e-6
MIN_LR_RATIO = 0.1
BETAS = (0.9, 0.999)  # torch's AdamW default, which the harness keeps
BLOCK_SIZE = 1024  # GPT positions; the longest possible prompt has 19 * 49 + 18 = 949 tokens

# What results.json records of the protocol (and what --resume requires to reuse a run).
PROTOCOL = {
    "batch_size": BATCH_SIZE,
    "optimizer": "torch AdamW, one parameter group: weight decay on every parameter",
    "betas": list(BETAS),
    "schedule": "timm CosineLRScheduler, warmup_prefix=False, per step: t_initial = all steps, "
    "warmup_t = ceil(epochs / 10) epochs, lr_min = min_lr_ratio x lr",
    "warmup_epoch_divisor": WARMUP_EPOCH_DIVISOR,
    "warmup_start_lr": WARMUP_START_LR,
    "min_lr_ratio": MIN_LR_RATIO,
    "gpt_block_size": BLOCK_SIZE,
}


def steps_per_epoch(num_train: int) -> int:
    return math.ceil(num_train / BATCH_SIZE)


@dataclass(frozen=True)
class FixedEpochs:
    """``epochs`` epochs at every N."""

    epochs: int

    def __call__(self, num_train: int) -> int:
        return self.epochs


@dataclass(frozen=True)
class EqualSteps:
    """About ``steps`` optimiser steps at every N: round(steps / ceil(N / 32)) epochs, at least one."""

    steps: int

    def __call__(self, num_train: int) -> int:
        return max(1, round(self.steps / steps_per_epoch(num_train)))


# The hyper-parameters of one model (``lr``, ``weight_decay``, ``grad_clip`` and the model config's fields).
HParams = dict[str, Any]


def mosaic(
    n_embd: int, n_layer: int, n_head: int, pmem_size: int, dropout: float, attn_dropout: float, lr: float
) -> HParams:
    return {
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "pmem_size": pmem_size,
        "dropout": dropout,
        "attn_dropout": attn_dropout,
        "lr": lr,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
    }


def gpt(n_embd: int, n_layer: int, n_head: int, dropout: float, lr: float) -> HParams:
    return {
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        "dropout": dropout,
        "lr": lr,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
    }


@dataclass(frozen=True)
class Preset:
    num_train: list[int]
    seeds: list[int]
    epochs: Callable[[int], int]  # of N
    num_test: int
    num_val: int
    models: dict[str, HParams]
    grid: dict[str, list] = field(default_factory=dict)  # of --grid: a small subset of the paper's search space


# fmt: off
PRESETS: dict[str, Preset] = {
    # the same 224 optimiser steps at every N: 56 / 14 / 7 epochs at N = 100 / 500 / 1000
    "cpu": Preset([100, 500, 1000], seeds=[0, 1], epochs=EqualSteps(224), num_test=500, num_val=100,
                  models={"mosaic": mosaic(64, 2, 4, pmem_size=224, dropout=0.05, attn_dropout=0.0, lr=4e-3),
                          "gpt": gpt(64, 2, 2, dropout=0.1, lr=1e-3)},
                  grid={"lr": [1e-3, 2e-3, 4e-3], "weight_decay": [0.01, 0.1]}),
    "paper": Preset([100, 500, 1000, 2500, 40000], seeds=[0, 1], epochs=FixedEpochs(200), num_test=500, num_val=500,
                    models={"mosaic": mosaic(128, 2, 8, pmem_size=448, dropout=0.05, attn_dropout=0.05, lr=5e-4),
                            "gpt": gpt(128, 8, 2, dropout=0.1, lr=5e-4)},
                    grid={"lr": [1e-4, 2.5e-4, 5e-4], "weight_decay": [0.01, 0.1]}),
    # for tests: tiny models, a handful of steps
    "quick": Preset([16], seeds=[0], epochs=FixedEpochs(2), num_test=8, num_val=8,
                    models={"mosaic": mosaic(16, 1, 2, pmem_size=8, dropout=0.0, attn_dropout=0.0, lr=1e-3),
                            "gpt": gpt(16, 1, 2, dropout=0.0, lr=1e-3)},
                    grid={"lr": [1e-3, 2e-3]}),
}
# fmt: on
MODELS = ("mosaic", "gpt")  # the kinds every preset configures
