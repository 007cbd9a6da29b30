"""The leaky average on a GPU as one Triton kernel per direction (issue 11, item 6).

``kbar_t = lambda_t kbar_{t-1} + x_t`` for one (batch, head) and a block of the head dimension per
program: the program walks the sequence in tiles of ``BLOCK_T`` steps, scans each tile in registers
(``tl.associative_scan`` of (decay product, partial sum) pairs) and carries the last step's sum into
the next tile. It reads x once and writes kbar once; the doubling scan of :mod:`.leaky_average`
makes ceil(log2 T) passes over the sequence, each reading and writing it. Arithmetic in float32
(float64 for float64 inputs); the result in x's dtype.

The same kernel runs time reversed for the backward (``g~_t = g_t + lambda_{t+1} g~_{t+1}``) and
then also forms ``<g~_t, kbar_{t-1}>`` (the decay's gradient, summed over the head dimension per
block; the blocks' partial sums are added by torch), like the CPU kernel of :mod:`.leaky_kernel`,
whose API this module mirrors: :class:`.leaky_average.LeakyAverage` calls either.

The kernel is launched inside a ``torch.library.triton_op``: eager, one custom op; under
``torch.compile``, inductor calls the Triton kernel from its generated code (no Python dispatch per
call, no graph break). Triton is imported, and the kernel defined, on first use. With
``TRITON_INTERPRET=1`` set before that, Triton's interpreter runs it on CPU tensors: the tests compare
it with :func:`.leaky_average.leaky_average_reference` there, and with every other form on a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor

from .leaky_kernel import empty_out

TILE = 4096  # elements of one (BLOCK_D x BLOCK_T) tile
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON = importlib.util.find_spec("triton") is not None  # looked up once: torch.compile traces the callers


def available() -> bool:
    """Whether Triton can be imported."""
    return _TRITON


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def supports(x: Tensor) -> bool:
    """Whether :func:`leaky_scan` handles ``x``: a CUDA tensor (a CPU one under ``TRITON_INTERPRET=1``)
    of float16, bfloat16, float32 or float64, with Triton installed."""
    on_device = x.device.type == "cuda" or (x.device.type == "cpu" and _interpreting())
    return on_device and x.dtype in DTYPES and _TRITON


@functools.cache
def _kernel():
    """The Triton kernel, imported on first use (so that ``TRITON_INTERPRET`` is read then)."""
    from .leaky_triton_kernel import leaky_scan_kernel

    return leaky_scan_kernel


def _blocks(D: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_T): at most 32 lanes of the head dimension per program (two programs per
    (batch, head) at head size 64, for more programs than the GPU has multiprocessors), the rest of
    the tile along time."""
    block_d = min(32, max(16, 1 << (D - 1).bit_length()))
    return block_d, max(16, min(128, TILE // block_d))


def _leaky_scan(
    x: Tensor,
    log_decay: Tensor,
    state: Tensor | None,
    reverse: bool,
    heads_last: bool,
    kbar: Tensor | None,
    kbar_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """x (B, H, T, D), unit stride along D; log_decay (B, H, T) float32 / float64, any strides; state
    (B, H, D) contiguous or None -> (y, dot): y (B, H, T, D) in x's dtype, laid out as (B, T, H, D)
    when ``heads_last``; ``reverse``: the recurrence runs from t = T - 1 down to 0. With ``kbar``
    (B, H, T, D), unit stride along D: dot (B, H, T), ``<y_t, kbar_{t-1}>`` (kbar_{-1} =
    ``kbar_state`` or 0) in float32 (float64 for float64 x), else an empty tensor."""
    B, H, T, D = x.shape
    y = empty_out(x, heads_last)
    block_d, block_t = _blocks(D)
    n_blocks = -(-D // block_d)
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    parts = x.new_empty((n_blocks, B, H, T) if kbar is not None else (0,), dtype=real)
    k = kbar if kbar is not None else x
    if B * H * T * D > 0:
        torch.library.wrap_triton(_kernel())[(B * H, n_blocks)](
            x, *x.stride()[:3],
            log_decay, *log_decay.stride(),
            state if state is not None else x,
            y, *y.stride()[:3],
            k, *k.stride()[:3],
            kbar_state if kbar_state is not None else x,
            parts,
            B, H, T, D,
            HAS_STATE=state is not None, REVERSE=reverse, WITH_DOT=kbar is not None, HAS_KS=kbar_state is not None,
            IS_F64=real == torch.float64, BLOCK_D=block_d, BLOCK_T=block_t,
        )  # fmt: skip
    return y, parts.sum(0) if kbar is not None else parts


if _TRITON:  # (without Triton, registering the op would only print a warning; nothing calls it then)
    _leaky_scan = torch.library.triton_op("memory_mosaics::leaky_scan_triton", _leaky_scan, mutates_args=())


def _prepared(x: Tensor, log_decay: Tensor) -> tuple[Tensor, Tensor]:
    """x with unit stride along D (no copy when it has one) and the log decays broadcast to
    (B, H, T) in float32 (float64 for float64 x), without copying a broadcast."""
    if not supports(x):
        raise ValueError(
            "the Triton leaky average needs Triton and a CUDA tensor (a CPU one under TRITON_INTERPRET=1) "
            f"of float16, bfloat16, float32 or float64; got {x.dtype} on {x.device.type}"
        )
    B, H, T, _ = x.shape
    if log_decay.dim() > 3:
        raise ValueError(f"log_decay must broadcast to (B, H, T), got shape {tuple(log_decay.shape)}")
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, log_decay.to(real).expand(B, H, T)


def leaky_scan(
    x: Tensor, log_decay: Tensor, state: Tensor | None = None, reverse: bool = False, heads_last: bool = False
) -> Tensor:
    """The leaky average of :func:`.leaky_average.leaky_average_reference` through the kernel.

    x (B, H, T, D), read in place whatever its strides (unit stride along D); log_decay broadcastable
    to (B, H, T); state (B, H, D) or None. ``heads_last``: the result is laid out as (B, T, H, D),
    else contiguous. Not differentiable by itself (``LeakyAverage`` provides the backward). Returns
    x's dtype.
    """
    x, logd = _prepared(x, log_decay)
    s = None if state is None else state.to(x.dtype).contiguous()
    return _leaky_scan(x, logd, s, reverse, heads_last, None, None)[0]


def leaky_scan_grad(
    grad: Tensor, log_decay: Tensor, kbar: Tensor | None, kbar_state: Tensor | None, heads_last: bool
) -> tuple[Tensor, Tensor | None]:
    """The backward's reverse scan ``g~_t = g_t + lambda_t g~_{t+1}`` of ``grad`` (B, H, T, D), with
    ``log_decay`` the shifted decays, and in the same pass ``<g~_t, kbar_{t-1}>`` (B, H, T) in float32
    (float64 for float64 ``grad``): ``kbar`` is the forward's output, ``kbar_state`` its initial
    state or None; no dots without ``kbar``. Returns (g~ in grad's dtype, laid out as (B, T, H, D)
    when ``heads_last``; the dots or None)."""
    g, logd = _prepared(grad, log_decay)
    k = None if kbar is None else (kbar if kbar.stride(-1) == 1 else kbar.contiguous())
    ks = None if kbar is None or kbar_state is None else kbar_state.to(k.dtype).contiguous()
    y, dot = _leaky_scan(g, logd, None, True, heads_last, k, ks)
    return y, (None if kbar is None else dot)
