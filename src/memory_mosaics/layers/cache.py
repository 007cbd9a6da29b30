"""Append-only tensor storage for decoding: a memory's stored pairs, or a transformer's KV cache."""

from __future__ import annotations

import torch
from torch import Tensor


class GrowingBuffer:
    """A (B, H, n, D) tensor that grows along dim 2 with amortised O(1) appends (capacity doubling)."""

    def __init__(self, initial: Tensor, min_capacity: int = 64):
        n = initial.shape[2]
        cap = max(min_capacity, 2 * n)
        self._data = initial.new_empty(*initial.shape[:2], cap, initial.shape[3])
        self._data[:, :, :n] = initial
        self.length = n

    def append(self, x: Tensor) -> None:
        """Append x (B, H, t, D)."""
        t = x.shape[2]
        if self.length + t > self._data.shape[2]:
            grown = self._data.new_empty(*self._data.shape[:2], 2 * (self.length + t), self._data.shape[3])
            grown[:, :, : self.length] = self._data[:, :, : self.length]
            self._data = grown
        self._data[:, :, self.length : self.length + t] = x
        self.length += t

    def view(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Stored entries [start, stop) as a (B, H, stop - start, D) view."""
        stop = self.length if stop is None else min(stop, self.length)
        return self._data[:, :, start:stop]

    def select(self, index: Tensor) -> None:
        """Keep only the batch rows in ``index`` (e.g. beam search, finished sequences)."""
        self._data = self._data[index]
