"""Optimiser and learning-rate schedule shared by every training loop of the project."""

from __future__ import annotations

import math

import torch

from ..models.base import LanguageModel


def build_optimizer(
    model: LanguageModel, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95)
) -> torch.optim.AdamW:
    """AdamW over the reference decay groups (decay on >= 2-dim tensors only)."""
    groups = [g for g in model.param_groups(weight_decay) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def warmup_cosine(
    step: int, max_lr: float, min_lr: float, warmup: int, total: int, warmup_start: float = 0.0, from_zero: bool = False
) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up from ``warmup_start`` to ``max_lr`` over
    ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``; ``min_lr`` afterwards.

    The warm-up is ``max_lr (step + 1) / warmup`` by default, or with ``from_zero`` the authors'
    language-model form ``max_lr step / warmup`` (0 at step 0; their ``get_cosine_lr``)."""
    if step < warmup:
        return warmup_start + (max_lr - warmup_start) * (step + (0 if from_zero else 1)) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
