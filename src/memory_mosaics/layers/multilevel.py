"""v2's two contextual memories per block (spec section 5.3).

    y_t = W_o [ CMem_short(x)_t ; CMem_long(x)_t ]

The short-term memory reads the pairs of the last ``h - 1`` steps (lags 1 .. h-1); the long-term
memory reads every pair at least ``m`` steps old (lags >= m), with ``m ~ U[m_lo, m_hi]`` drawn per
forward pass during training and ``m = m_lo`` at inference. The windows overlap. Each memory has its
own extractors and bandwidth; their outputs are concatenated and combined by ``W_o``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from .contextual import ContextualMemory, ContextualState


@dataclass
class ShortLongState:
    """Decoding state of a :class:`ShortLongMemory`: one state per contextual memory."""

    short: ContextualState
    long: ContextualState


class ShortLongMemory(nn.Module):
    """Args: short, long: :class:`ContextualMemory` with identity output projections;
    proj: W_o, (B, T, 2 d) -> (B, T, d); long_skip: (m_lo, m_hi)."""

    def __init__(
        self,
        short: ContextualMemory,
        long: ContextualMemory,
        proj: nn.Module,
        long_skip: tuple[int, int],
        resid_dropout: float = 0.0,
    ):
        super().__init__()
        if not 1 <= long_skip[0] <= long_skip[1]:
            raise ValueError(f"long_skip must satisfy 1 <= m_lo <= m_hi, got {long_skip}")
        if long.min_lag != long_skip[0]:
            raise ValueError(
                f"the long-term memory's min_lag ({long.min_lag}) must be m_lo ({long_skip[0]}), its value at inference"
            )
        self.short, self.long, self.c_proj = short, long, proj
        self.long_skip = tuple(long_skip)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        m = self._skip(x.device) if self.training else self.long_skip[0]
        return self.resid_dropout(self.c_proj(torch.cat([self.short(x), self.long(x, min_lag=m)], dim=-1)))

    def _skip(self, device: torch.device) -> int | Tensor:
        """m ~ U[m_lo, m_hi]: a Python int in eager mode; under ``torch.compile`` a 0-d tensor drawn
        by torch's generator, which the long-term memory reads through a mask, so that one graph
        serves every m (an int would be a graph break, or one graph per value)."""
        if torch.compiler.is_compiling():
            return torch.randint(self.long_skip[0], self.long_skip[1] + 1, (), device=device)
        return random.randint(*self.long_skip)

    @torch.no_grad()
    def prefill(self, x: Tensor) -> tuple[Tensor, ShortLongState]:
        ys, short = self.short.prefill(x)
        yl, long = self.long.prefill(x)  # the long memory's own min_lag: m_lo, as at inference
        return self.c_proj(torch.cat([ys, yl], dim=-1)), ShortLongState(short, long)

    @torch.no_grad()
    def step(self, x: Tensor, state: ShortLongState) -> Tensor:
        return self.c_proj(torch.cat([self.short.step(x, state.short), self.long.step(x, state.long)], dim=-1))
