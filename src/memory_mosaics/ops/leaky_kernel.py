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
its forward and, time reversed, in its backward (:func:`leaky_scan_grad`, which also forms the dot
products of the decay's gradient in the same pass). It reads its input in place through the strides
of a projection split into heads, and the backward writes ``dL/dx`` in that layout, so that neither
direction copies the (B, H, T, D) tensor.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from . import native

SOURCE = Path(__file__).with_name("csrc") / "leaky_average.c"


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    for name in ("leaky_scan_f32", "leaky_scan_f64"):
        getattr(lib, name).argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i64, i64, i64, ptr, ptr, ptr] + [i32] * 8


_library, available = native.kernel(SOURCE, _configure)


def supports(x: Tensor) -> bool:
    """Whether :func:`leaky_scan` handles ``x``: a CPU tensor of float32, float64 or bfloat16, kernel built."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16) and available()


def empty_out(x: Tensor, heads_last: bool) -> Tensor:
    """An uninitialised (B, H, T, D) output like x: laid out as (B, T, H, D) when ``heads_last`` (a
    projection split into heads), else contiguous. Shared with :mod:`.leaky_triton`."""
    B, H, T, D = x.shape
    return x.new_empty(B, T, H, D).transpose(1, 2) if heads_last else x.new_empty(B, H, T, D)


@torch.library.custom_op("memory_mosaics::leaky_scan", mutates_args=(), device_types="cpu")
def _leaky_scan(
    x: Tensor,
    decay: Tensor,
    state: Tensor | None,
    reverse: bool,
    heads_last: bool,
    kbar: Tensor | None,
    kbar_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """x (B, H, T, D), unit stride along D, float32 or float64; decay lambda (B, H, T) float64
    contiguous; state (B, H, D) or None, contiguous, x's dtype -> (y, dot): y (B, H, T, D) in x's dtype,
    laid out as (B, T, H, D) when ``heads_last``, else contiguous; ``reverse``: the recurrence runs
    from t = T - 1 down to 0. With ``kbar`` (B, H, T, D) contiguous: dot (B, H, T) float64,
    ``<y_t, kbar_{t-1}>`` (kbar_{-1} = ``kbar_state`` or 0), else an empty tensor."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the leaky-average kernel is unavailable in this process (see the warning above)")
    B, H, T, D = x.shape
    y = empty_out(x, heads_last)
    dot = torch.empty(B, H, T, dtype=torch.float64) if kbar is not None else decay.new_empty(0)
    kernel = lib.leaky_scan_f64 if x.dtype == torch.float64 else lib.leaky_scan_f32
    native.run_shares(
        lambda xp, lp, sp, yp, kp, ksp, dp, *rest: kernel(
            xp, *x.stride()[:3], lp, sp, yp, *y.stride()[:3], kp, ksp, dp, *rest
        ),
        [x, decay, state, y, kbar, kbar_state, dot if kbar is not None else None],
        (B, H, T, D, native.heads_per_task(B, H), int(reverse)),
    )
    return y, dot


@_leaky_scan.register_fake
def _(x, decay, state, reverse, heads_last, kbar, kbar_state):
    B, H, T, _ = x.shape
    dot = decay.new_empty(B, H, T) if kbar is not None else decay.new_empty(0)
    return empty_out(x, heads_last), dot


def _prepared(x: Tensor, state: Tensor | None, log_decay: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    """x in float32 / float64 with unit stride along D (no copy when it has one), the state alike,
    and the decays lambda as float64 (B, H, T)."""
    if not supports(x):
        raise ValueError("leaky_scan needs the compiled kernel and a CPU float32, float64 or bfloat16 tensor")
    B, H, T, D = x.shape
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(real)
    if x.stride(-1) != 1:
        x = x.contiguous()
    decay = log_decay.double().exp().expand(B, H, T).contiguous()
    return x, (None if state is None else state.to(real).contiguous()), decay


def leaky_scan(
    x: Tensor, log_decay: Tensor, state: Tensor | None = None, reverse: bool = False, heads_last: bool = False
) -> Tensor:
    """The leaky average of :func:`.leaky_average.leaky_average_reference` through the kernel.

    x (B, H, T, D), read in place whatever its strides (unit stride along D); log_decay broadcastable
    to (B, H, T); state (B, H, D) or None. ``heads_last``: the result is laid out as (B, T, H, D)
    (the layout of a projection's output split into heads), else contiguous. Not differentiable by
    itself (``LeakyAverage`` provides the backward). Returns x's dtype.
    """
    dtype = x.dtype
    x, s, decay = _prepared(x, state, log_decay)
    return _leaky_scan(x, decay, s, reverse, heads_last, None, None)[0].to(dtype)


def leaky_scan_grad(
    grad: Tensor, log_decay: Tensor, kbar: Tensor | None, kbar_state: Tensor | None, heads_last: bool
) -> tuple[Tensor, Tensor | None]:
    """The backward's reverse scan ``g~_t = g_t + lambda_t g~_{t+1}`` of ``grad`` (B, H, T, D), with
    ``log_decay`` the shifted decays, and ``<g~_t, kbar_{t-1}>`` (B, H, T) float64 in the same pass
    (``kbar`` the forward's output, ``kbar_state`` its initial state or None; no dots without
    ``kbar``). Returns (g~ in grad's dtype, laid out as (B, T, H, D) when ``heads_last``, the dots
    or None)."""
    dtype = grad.dtype
    g, _, decay = _prepared(grad, None, log_decay)
    real = g.dtype
    k = None if kbar is None else kbar.to(real).contiguous()
    ks = None if kbar is None or kbar_state is None else kbar_state.to(real).contiguous()
    y, dot = _leaky_scan(g, decay, None, True, heads_last, k, ks)
    return y.to(dtype), (None if kbar is None else dot)
