"""Pieces shared by the Memory Mosaic layers and the GPT-2 baseline: multi-head reshaping, the
residual-branch output projection (whose initialisation depends on depth), and the append-only
buffer that holds a memory's stored pairs or a transformer's KV cache during decoding."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor


def exporting() -> bool:
    """True only while ``torch.export`` traces (the ops then take their branch-free forms).

    Not ``torch.compiler.is_exporting()``: before torch 2.13, dynamo replaced that call by the
    constant True, under ``torch.compile`` too (pytorch/pytorch#176347), so compiled models ran the
    export forms (O(T^2) leaky average, masked retrieval). The flag export sets is read instead,
    which dynamo reads as its value (False under ``torch.compile``); a torch without that flag falls
    back to ``torch.compiler.is_exporting()``."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def inverse_norm(x: Tensor) -> Tensor:
    """1 / ||x|| over the last dim, shape (..., 1), in x's dtype (under autocast the sum and rsqrt run
    in fp32 and would otherwise promote every key, query and value to fp32): multiply by it (cheaper
    to differentiate than a division)."""
    return torch.rsqrt(x.square().sum(dim=-1, keepdim=True)).to(x.dtype)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, H * Dh) -> (B, H, T, Dh)."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, Dh) -> (B, T, H * Dh)."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


class ResidualProjection(nn.Linear):
    """The projection that closes a residual branch (``c_proj``, ``W_o``; bias-free by default).

    Models initialise it with a depth-scaled std (the Mosaic N(0, 1/(fan_in n_layer)), GPT-2
    0.02 / sqrt(2 n_layer)); being its own type, it is found by type, not by attribute name."""

    def __init__(self, d_in: int, d_out: int, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)


_RESERVED: contextvars.ContextVar[int] = contextvars.ContextVar("reserved_length", default=0)


@contextlib.contextmanager
def reserve(length: int) -> Iterator[None]:
    """Every :class:`GrowingBuffer` created inside holds ``length`` entries from the start: a
    decoding loop that knows its final length (prompt + new tokens) then never reallocates its
    caches (a static, preallocated cache), which also keeps a compiled step's shapes stable."""
    token = _RESERVED.set(length)
    try:
        yield
    finally:
        _RESERVED.reset(token)


class GrowingBuffer:
    """A (B, H, n, D) tensor that grows along dim 2 with amortised O(1) appends (capacity doubling),
    preallocated to the length given by :func:`reserve` when created inside it."""

    def __init__(self, initial: Tensor, min_capacity: int = 64):
        n = initial.shape[2]
        cap = max(min_capacity, 2 * n, _RESERVED.get())
        self._data = initial.new_empty(*initial.shape[:2], cap, initial.shape[3])
        self._data[:, :, :n] = initial
        self.length = n

    def claim(self, t: int = 1) -> int:
        """Make room for t more entries (left unwritten, for the caller to fill) and count them in;
        returns the index of the first."""
        n = self.length
        if n + t > self._data.shape[2]:
            grown = self._data.new_empty(*self._data.shape[:2], 2 * (n + t), self._data.shape[3])
            grown[:, :, :n] = self._data[:, :, :n]
            self._data = grown
        self.length = n + t
        return n

    def append(self, x: Tensor) -> None:
        """Append x (B, H, t, D)."""
        n = self.claim(x.shape[2])
        self._data[:, :, n : self.length] = x

    @property
    def capacity(self) -> int:
        """Entries it holds before it must reallocate."""
        return self._data.shape[2]

    @property
    def storage(self) -> Tensor:
        """The whole (B, H, capacity, D) storage; entries from ``length`` on are unused."""
        return self._data

    def view(self, start: int = 0, stop: int | None = None) -> Tensor:
        """Stored entries [start, stop) as a (B, H, stop - start, D) view."""
        stop = self.length if stop is None else min(stop, self.length)
        return self._data[:, :, start:stop]


def frozen(module: nn.Module, name: str, compute: Callable[[], Tensor], also: tuple[nn.Module, ...] = ()) -> Tensor:
    """``compute()``, a function of the own parameters and buffers of ``module`` (and of the modules
    ``also``), memoised under ``name`` while no autograd graph is recorded and none of them changed
    (same storage, same version counter): decoding computes its per-head transforms (decays,
    bandwidths, scales) once, not at every token. With gradients enabled, or while compiling, it
    simply calls ``compute()``."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return compute()
    # the modules' own tensors, read from their registries (parameters(False) walks a generator: a
    # decoding step calls this a few times per memory)
    key = tuple(
        (t.data_ptr(), t._version)
        for m in (module, *also)
        for t in (*m._parameters.values(), *m._buffers.values())
        if t is not None
    )
    cache = module.__dict__.setdefault("_frozen", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, compute())
    return hit[1]
