"""The leaky average on the CPU as one compiled pass: ``csrc/leaky_average.c``.

``kbar_t = lambda_t kbar_{t-1} + x_t`` run literally, row by row, vectorised over the head
dimension: it reads x once and writes kbar once, where the chunked form of :mod:`.leaky_average`
runs small matrix products and copies (speed-up measured by ``benchmarks/bench_leaky_average.py``,
recorded in ``docs/benchmarks.md``). Float32 or float64 storage (bfloat16 inputs run in float32), the
running sum and the decays in float64.

The C file is compiled on first use and cached by :mod:`.native` (hash-verified before every load;
``MEMORY_MOSAICS_NATIVE=0`` disables it); without it :func:`available` is False and the leaky
average keeps its torch forms. The kernel is the ``torch.library`` custom op
``memory_mosaics::leaky_scan`` with a fake (shape-only) implementation, so ``torch.compile`` traces
through it. It has no autograd formula of its own: :class:`.leaky_average.LeakyAverage` calls it in
its forward and, time reversed, in its backward.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from . import native

SOURCE = Path(__file__).with_name("csrc") / "leaky_average.c"


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    for name in ("leaky_scan_f32", "leaky_scan_f64"):
        getattr(lib, name).argtypes = [ptr] * 4 + [i32] * 6


_library, available = native.kernel(SOURCE, _configure)


def supports(x: Tensor) -> bool:
    """Whether :func:`leaky_scan` handles ``x``: a CPU tensor of float32, float64 or bfloat16, kernel built."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16) and available()


@torch.library.custom_op("memory_mosaics::leaky_scan", mutates_args=(), device_types="cpu")
def _leaky_scan(x: Tensor, decay: Tensor, state: Tensor | None, reverse: bool) -> Tensor:
    """x (B, H, T, D) and state (B, H, D) or None, contiguous, float32 or float64 (both alike); decay
    lambda (B, H, T) float64 contiguous -> kbar (B, H, T, D), x's dtype; ``reverse``: the recurrence
    runs from t = T - 1 down to 0."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the leaky-average kernel is unavailable in this process (see the warning above)")
    B, H, T, D = x.shape
    y = torch.empty_like(x)
    kernel = lib.leaky_scan_f64 if x.dtype == torch.float64 else lib.leaky_scan_f32
    native.run_shares(kernel, [x, decay, state, y], (B * H, T, D, int(reverse)))
    return y


@_leaky_scan.register_fake
def _(x: Tensor, decay: Tensor, state: Tensor | None, reverse: bool) -> Tensor:
    return torch.empty_like(x)


def leaky_scan(x: Tensor, log_decay: Tensor, state: Tensor | None = None, reverse: bool = False) -> Tensor:
    """The leaky average of :func:`.leaky_average.leaky_average_reference` through the kernel.

    x (B, H, T, D); log_decay broadcastable to (B, H, T); state (B, H, D) or None. Not
    differentiable by itself (``LeakyAverage`` provides the backward). Returns x's dtype.
    """
    if not supports(x):
        raise ValueError("leaky_scan needs the compiled kernel and a CPU float32, float64 or bfloat16 tensor")
    B, H, T, D = x.shape
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    decay = log_decay.double().exp().expand(B, H, T).contiguous()
    s = None if state is None else state.to(real).contiguous()
    return _leaky_scan(x.to(real).contiguous(), decay, s, reverse).to(x.dtype)
