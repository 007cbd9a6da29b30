"""Kernel bandwidths beta: the score of a query k_t against a stored key k_s is beta * k_t . k_s.

Each bandwidth maps the number of pairs ``n`` a query can see, shape (T,), to beta of shape
(1 or H, T), so that a memory computes ``q_t = beta_t * k_t`` and calls the retrieval op with
scale 1. Constant bandwidths ignore ``n`` (``depends_on_count = False``): called with ``n = None``
they return one beta per head, (1 or H, 1), which broadcasts over time (the memories then build no
count at all, a saving in every decoding step); v2's adaptive bandwidth grows with ``n``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..common import frozen
from .extractors import EXP_SCALE, per_head_scalars


class FixedBandwidth(nn.Module):
    """A constant beta (three moons: beta = 50)."""

    depends_on_count = False

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)
        self.register_buffer("_beta", torch.full((1, 1), self.beta), persistent=False)

    def forward(self, n: Tensor | None) -> Tensor:
        return self._beta if n is None else self._beta.expand(-1, n.shape[0])


class LearnedBandwidth(nn.Module):
    """Per-head learned bandwidth of the reference code (spec 2.1).

    Keys are multiplied by ``s_h = exp(min(10 theta_h, cap))`` (theta init 0.1; the cap 5 keeps fp16
    finite). In a contextual memory both the query and the stored key carry s_h, so
    ``beta_h = s_h ** 2``; the persistent memory multiplies its query by ``s_h ** 2`` directly
    (reference code). Either way the score is ``s_h ** 2 * (unit query) . key``. ``learn=False``
    keeps theta at its initial value (ablation "fixed bandwidth": beta = e ** 2 ~ 7.39 at init 0.1).
    """

    depends_on_count = False

    def __init__(self, n_head: int, init: float = 0.1, cap: float = 5.0, learn: bool = True):
        super().__init__()
        per_head_scalars(self, "theta", torch.full((n_head,), init), learn)
        self.cap = cap

    def forward(self, n: Tensor | None) -> Tensor:
        beta = frozen(self, "beta", lambda: torch.exp(torch.clamp(EXP_SCALE * self.theta, max=self.cap))[:, None] ** 2)
        return beta if n is None else beta.expand(-1, n.shape[0])


class AdaptiveBandwidth(nn.Module):
    """v2 adaptive bandwidth (spec 5.1): ``beta = beta_1 * n ** alpha + beta_0``.

    ``beta_0 = exp(min(theta_0, 10))``, ``beta_1 = exp(min(theta_1, 10))`` (theta init 1.5) and
    ``alpha = min(|theta_a|, 1)`` (theta_a init 1/3), per head.
    """

    depends_on_count = True

    def __init__(self, n_head: int):
        super().__init__()
        self.theta_0 = nn.Parameter(torch.full((n_head,), 1.5))
        self.theta_1 = nn.Parameter(torch.full((n_head,), 1.5))
        self.theta_a = nn.Parameter(torch.full((n_head,), 1.0 / 3.0))

    def forward(self, n: Tensor) -> Tensor:
        beta_0 = torch.exp(torch.clamp(self.theta_0, max=10.0))[:, None]
        beta_1 = torch.exp(torch.clamp(self.theta_1, max=10.0))[:, None]
        alpha = torch.clamp(self.theta_a.abs(), max=1.0)[:, None]
        return beta_1 * n.to(beta_1.dtype)[None, :] ** alpha + beta_0


def make_bandwidth(spec: str | float, n_head: int) -> nn.Module:
    """'learned' | 'fixed' (the learned bandwidth kept at its initial value) | 'adaptive' | a number (fixed beta)."""
    if spec in ("learned", "fixed"):
        return LearnedBandwidth(n_head, learn=spec == "learned")
    if spec == "adaptive":
        return AdaptiveBandwidth(n_head)
    try:
        beta = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"bandwidth must be 'learned', 'fixed', 'adaptive' or a number, got {spec!r}") from None
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"a fixed bandwidth must be a positive number, got {spec!r}")
    return FixedBandwidth(beta)
