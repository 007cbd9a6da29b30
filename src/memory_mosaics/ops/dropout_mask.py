"""Dropout keep-masks on the CPU from a counter-based generator: ``csrc/dropout_mask.c``.

``dropout_mask(shape, p, dtype)`` is a tensor whose elements are 0 with probability p and
``1 / (1 - p)`` otherwise, independently: multiplying by it is inverted dropout, as
``F.dropout``. The mask is a pure function of a 64-bit seed and the element's index (SplitMix64),
so the C loop vectorises; the seed is drawn from torch's default generator, so ``torch.manual_seed``
reproduces the masks and activation checkpointing, which replays the generator's state, recomputes
the same ones. Measured: ``benchmarks/bench_readout.py`` (``docs/benchmarks.md``).

The kernel is compiled on first use and cached by :mod:`.native`; without it :func:`available` is
False and callers keep ``F.dropout``. It is the ``torch.library`` custom op
``memory_mosaics::dropout_mask`` (with a fake implementation), so ``torch.compile`` traces it; the
mask is not differentiable (a constant of the product it multiplies).
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch
from torch import Tensor

from . import native

SOURCE = Path(__file__).with_name("csrc") / "dropout_mask.c"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32, i64, u64, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32
    lib.dropout_mask_f32.argtypes = [ptr, i64, u64, u32, ctypes.c_float, i32, i32]
    lib.dropout_mask_u16.argtypes = [ptr, i64, u64, u32, ctypes.c_uint16, i32, i32]


_library, available = native.kernel(SOURCE, _configure)


def supports(x: Tensor) -> bool:
    """Whether :func:`dropout_mask` can make a mask for ``x``: CPU float32, bfloat16 or float16."""
    return x.device.type == "cpu" and x.dtype in DTYPES and available()


@torch.library.custom_op("memory_mosaics::dropout_mask", mutates_args=(), device_types="cpu")
def _dropout_mask(seed: Tensor, shape: list[int], p: float, dtype: torch.dtype) -> Tensor:
    """seed: int64 tensor of one element -> mask of ``shape`` and ``dtype`` (0 or 1 / (1 - p))."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the dropout-mask kernel is unavailable in this process (see the warning above)")
    out = torch.empty(shape, dtype=dtype)
    threshold = min(round(p * 2**32), 2**32 - 1)
    keep = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    if dtype == torch.float32:
        fn, value = lib.dropout_mask_f32, float(keep)
    else:
        fn, value = lib.dropout_mask_u16, int(keep.view(torch.int16)) & 0xFFFF
    seed_value = int(seed.item()) & (2**64 - 1)
    native.run_shares(lambda o, *rest: fn(o, out.numel(), seed_value, threshold, value, *rest), [out], ())
    return out


@_dropout_mask.register_fake
def _(seed: Tensor, shape: list[int], p: float, dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype)


def dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverted-dropout mask on the CPU: 0 with probability ``p``, else ``1 / (1 - p)`` (in ``dtype``,
    rounded like ``F.dropout``'s scale). Draws its seed from torch's default CPU generator."""
    if not 0.0 <= p < 1.0 or math.isnan(p):
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64)
    return _dropout_mask(seed, list(shape), p, dtype)
