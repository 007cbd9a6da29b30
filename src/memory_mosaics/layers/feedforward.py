"""Feed-forward networks in place of the persistent memory: v2's SwiGLU, and a GELU MLP (ablation).

Both are stateless, so decoding is the forward. At the hidden sizes :class:`MosaicConfig` picks
(SwiGLU 3 d, GELU MLP 4.5 d) each has 9 d^2 weights, as the bank P-mem with N = 3.5 d pairs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class FeedForward(nn.Module, ABC):
    """Base: ``c_proj(hidden(x))`` with residual dropout; subclasses define ``hidden``."""

    def __init__(self, proj: nn.Module, resid_dropout: float = 0.0):
        super().__init__()
        self.c_proj = proj
        self.resid_dropout = nn.Dropout(resid_dropout)

    @abstractmethod
    def hidden(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> the hidden activations (B, T, hidden)."""

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> (B, T, d_out)."""
        return self.resid_dropout(self.c_proj(self.hidden(x)))

    def prefill(self, x: Tensor) -> tuple[Tensor, None]:
        return self(x), None

    def step(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return self(x), None


class SwiGLU(FeedForward):
    """v2's persistent memory: ``W_2 (silu(W_1 x) * W_3 x)``, 3 d hidden x d weights."""

    def __init__(self, d: int, hidden: int, proj: nn.Module, resid_dropout: float = 0.0):
        super().__init__(proj, resid_dropout)
        self.w_1 = nn.Linear(d, hidden, bias=False)
        self.w_3 = nn.Linear(d, hidden, bias=False)

    def hidden(self, x: Tensor) -> Tensor:
        return F.silu(self.w_1(x)) * self.w_3(x)


class GeluMLP(FeedForward):
    """GPT-2's feed-forward without biases, ``W_2 gelu(W_1 x)`` (ablation of the persistent memory)."""

    def __init__(self, d: int, hidden: int, proj: nn.Module, resid_dropout: float = 0.0):
        super().__init__(proj, resid_dropout)
        self.w_1 = nn.Linear(d, hidden, bias=False)

    def hidden(self, x: Tensor) -> Tensor:
        return F.gelu(self.w_1(x))
