"""Training one three-moons memory: spec 4.1's clipped loss, a linear learning rate and Adam, each
step through the project's one optimiser step (:class:`...training.loop.OptimizerStep`).

Default optimiser: the reference code's update, MLX's AdamW with weight decay 0 (no bias
correction) on its raw 6x6 weights, expressed on the complex parameters (:class:`MLXAdam`:
``w -= lr * m_t / (sqrt(v_t) + 2 eps)`` with m_t, v_t the moments of this project's gradients).
``Settings.bias_correction``: torch's standard AdamW (eps ``settings.eps``). Either is plugged into
the same loop; a NaN or infinite loss raises :class:`TrainingDiverged` before the weights move.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import trange

from ...data.moons import WINDOW, MoonSystem, sample_batch
from ...layers import ContextualMemory
from ...training.loop import OptimizerStep
from ...training.mlx_adam import MLXAdam, mlx_param_groups
from .settings import Settings


def clipped_loss(y_hat: Tensor, y: Tensor, clip: float) -> Tensor:
    """Spec loss: mean of clip(y_hat - y, -clip, clip)^2 over (B, T, 6)."""
    return (y_hat - y).clamp(-clip, clip).square().mean()


def lr_schedule(settings: Settings) -> Callable[[int], float]:
    """Linear from ``lr[0]`` at the first step to ``lr[1]`` at the last."""
    lr0, lr1 = settings.lr
    return lambda step: lr0 + (lr1 - lr0) * step / max(1, settings.steps - 1)


def build_optimizer(memory: ContextualMemory, settings: Settings) -> torch.optim.Optimizer:
    """Adam, betas ``settings.betas``, no weight decay: MLX's (default) or torch's bias-corrected AdamW."""
    lr = settings.lr[0]
    if settings.bias_correction:
        return torch.optim.AdamW(memory.parameters(), lr=lr, betas=settings.betas, eps=settings.eps, weight_decay=0.0)
    return MLXAdam(mlx_param_groups(memory), lr=lr, betas=settings.betas, eps=settings.eps)


def train(
    memory: ContextualMemory, systems: list[MoonSystem], settings: Settings, seed: int, desc: str, progress: bool = True
) -> list[float]:
    """Train ``memory`` on batches of ``systems`` drawn with ``seed``; returns the loss of every step.

    Raises :class:`TrainingDiverged` at a non-finite loss (the weights stay those of the last good step).
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer_step = OptimizerStep(memory, build_optimizer(memory, settings), lr_schedule(settings))
    losses = []
    memory.train()
    for step in (bar := trange(settings.steps, desc=desc, disable=not progress)):
        x, y = sample_batch(systems, settings.batch_size, WINDOW, gen)  # (B, 800, 6)
        result = optimizer_step(step, lambda _, x=x, y=y: clipped_loss(memory(x), y, settings.clip))
        losses.append(result.loss)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    memory.eval()
    return losses
