"""One optimiser step, the same for every training loop of the project (the language trainer,
RegBench, three moons):

    lr = schedule(step)  ->  for each micro-batch: loss, backward (scaled, divided by their number)
    ->  the mean loss must be finite  ->  unscale, clip (the gradient norm must then be finite
    unless a gradient scaler is skipping the step)  ->  optimiser step  ->  zero the gradients

A non-finite loss or gradient norm raises :class:`TrainingDiverged` before the optimiser moves, so
the weights stay those of the last good step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from .optim import set_lr


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the optimiser did not take that step."""


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches (and processes, with ``reduce``)
    grad_norm: float | None  # before clipping; None without clipping
    lr: float


class OptimizerStep:
    """Args:
    model: whose parameters are clipped.
    optimizer: any ``torch.optim.Optimizer``.
    schedule: ``step -> learning rate`` (0-based step).
    grad_clip: max gradient norm (0: no clipping).
    scaler: a ``torch.amp.GradScaler`` (fp16), or None.
    reduce: applied to the summed micro-batch loss (e.g. an all-reduce over processes).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Callable[[int], float],
        grad_clip: float = 0.0,
        scaler: torch.amp.GradScaler | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.grad_clip, self.reduce = grad_clip, reduce
        self.scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)

    def __call__(
        self,
        step: int,
        loss_fn: Callable[[int], Tensor],
        micro_batches: int = 1,
        context: Callable[[int], ContextManager] = lambda a: nullcontext(),
    ) -> StepResult:
        """Take optimiser step ``step``: ``loss_fn(a)`` is the loss of micro-batch ``a``, computed and
        back-propagated inside ``context(a)`` (e.g. DDP's ``no_sync`` for all but the last)."""
        lr = self.schedule(step)
        set_lr(self.optimizer, lr)
        total = None
        for a in range(micro_batches):
            with context(a):
                loss = loss_fn(a)
                self.scaler.scale(loss / micro_batches).backward()
            total = loss.detach() if total is None else total + loss.detach()
        total = total / micro_batches
        loss = float(self.reduce(total) if self.reduce else total)
        if not math.isfinite(loss):
            self._diverged(f"loss is {loss}", step)
        grad_norm = None
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                self._diverged(f"gradient norm is {grad_norm}", step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, grad_norm, lr)

    def _diverged(self, what: str, step: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"{what} at step {step + 1}")
