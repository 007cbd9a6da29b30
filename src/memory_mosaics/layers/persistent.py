"""Persistent memory (P-mem, spec 2.2): N trainable (key, value) pairs per head, fixed at inference.

    q_t = beta_h * kbar_t / ||kbar_t||           (its own leaky-average key extractor; beta_h kbar_t
                                                 without the normalisation when ``normalize=False``)
    y_t = W_o concat_h alpha_h sum_{i=1}^{N} softmax_i(q_t . kappa_i) u_i

kappa, u ~ N(0, 1/Dh), not normalised; alpha_h = exp(10 theta_h), theta init -0.05 (reference).
With N = 3.5 d a P-mem has 2 d^2 + 2 N d = 9 d^2 weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..common import frozen, merge_heads, split_heads
from ..ops import memory_step
from ..ops.retrieval import memory_readout
from ..ops.unit_rows import unit_keys
from .extractors import EXP_SCALE, LeakyAverageKey, LinearKey, step_decay


class PersistentMemory(nn.Module):
    """Args: key extractor, bandwidth, n_head, head_dim, size N (pairs per head), proj W_o, dropouts,
    ``normalize``: unit-normalise the query before the bandwidth (reference) or not (ablation)."""

    def __init__(
        self,
        key: nn.Module,
        bandwidth: nn.Module,
        n_head: int,
        head_dim: int,
        size: int,
        proj: nn.Module,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__()
        self.key, self.bandwidth, self.c_proj = key, bandwidth, proj
        self.normalize = normalize
        self.kappa = nn.Parameter(torch.randn(1, n_head, size, head_dim) / math.sqrt(head_dim))
        self.u = nn.Parameter(torch.randn(1, n_head, size, head_dim) / math.sqrt(head_dim))
        self.theta = nn.Parameter(torch.full((n_head,), -0.5 / EXP_SCALE))
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def _queries(self, x: Tensor, key_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """q_t = beta_h kbar_t / ||kbar_t|| (or beta_h kbar_t), (B, H, T, Dh), and the key extractor's state."""
        kbar, key_state = self.key(x, key_state)
        beta = self._bandwidth().to(kbar.dtype)[None, :, :, None]  # (1, 1|H, 1, 1)
        return (unit_keys(kbar, beta, keys=False)[1] if self.normalize else kbar * beta), key_state

    def _bandwidth(self) -> Tensor:
        """beta (1 or H, 1): every query sees the N pairs."""
        n = torch.full((1,), self.kappa.shape[2], device=self.kappa.device) if self.bandwidth.depends_on_count else None
        return self.bandwidth(n)

    def _forward(self, x: Tensor, key_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        q, key_state = self._queries(x, key_state)
        p = self.attn_dropout if self.training else 0.0
        y = memory_readout(q, self.kappa, self.u, dropout_p=p)
        y = y * self.alpha().view(1, -1, 1, 1).to(y.dtype)
        return self.resid_dropout(self.c_proj(merge_heads(y))), key_state

    def alpha(self) -> Tensor:
        """alpha_h = exp(10 theta_h), (H,)."""
        return frozen(self, "alpha", lambda: (EXP_SCALE * self.theta).exp())

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d_in) -> (B, T, d_out)."""
        return self._forward(x, None)[0]

    def retrieval_weights(self, x: Tensor) -> Tensor:
        """softmax_i(q_t . kappa_i) for inspection: x (B, T, d_in) -> (B, H, T, N)."""
        q, _ = self._queries(x, None)
        return torch.softmax(q @ self.kappa.transpose(-1, -2), dim=-1)

    @torch.no_grad()
    def prefill(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Output and the key extractor's state after x."""
        return self._forward(x, None)

    @torch.no_grad()
    def step(self, x: Tensor, key_state: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One input x (B, 1, d_in) continuing from ``key_state``. On the CPU with a per-head decay
        (or none), all but the projections is :func:`..ops.memory_step.memory_step` (C kernels)."""
        kernel = memory_step.supports(x) and isinstance(self.key, (LeakyAverageKey, LinearKey))
        if self.training or not kernel:  # in training mode: with the retrieval dropout of training
            return self._forward(x, key_state)
        H = self.kappa.shape[1]
        decay, beta, alpha = frozen(
            self,
            "step_scalars",  # lambda_h, beta_h, alpha_h (H,)
            lambda: torch.stack([step_decay(self.key, H), self._bandwidth().expand(H, 1)[:, 0], self.alpha()]),
            also=(self.key, self.bandwidth),
        )
        leaky = isinstance(self.key, LeakyAverageKey)
        phi = split_heads(self.key.proj(x), H)
        state = key_state[:, :, None] if leaky and key_state is not None else None
        y, kbar, _ = memory_step.memory_step(
            phi, state, decay, beta, self.kappa, self.u, 0, self.kappa.shape[2], alpha=alpha, normalize=self.normalize
        )
        return self.resid_dropout(self.c_proj(merge_heads(y))), (kbar[:, :, 0] if leaky else None)
