"""Causal retrieval for small head sizes (D <= 8) on the CPU: a compiled kernel with its own backward.

At head sizes of 2-6 (the three-moons memory: 3 heads of size 2, or 1 of size 6) PyTorch's CPU
attention kernels cost as much per (query, pair) as at head size 16; ``csrc/small_head_retrieval.c``
vectorises over 16 queries (or 16 pairs) instead of over the head dimension (speed-ups measured by
``benchmarks/bench_small_head.py``, recorded in ``docs/benchmarks.md``).
It computes the function of :func:`.retrieval.causal_retrieval_reference` (tests compare values and
gradients).

The C file is compiled on first use and cached by :mod:`.native` (hash-verified before every load;
``MEMORY_MOSAICS_NATIVE=0`` disables it). Without it :func:`available` is False and
:func:`.retrieval.causal_retrieval` keeps using ``scaled_dot_product_attention``.

The kernel is registered as two ``torch.library`` custom ops, ``memory_mosaics::small_head_forward``
and ``memory_mosaics::small_head_backward``, each with a fake (shape-only) implementation, and the
forward with its autograd formula (the backward op): ``torch.compile(fullgraph=True)`` traces
through them without a graph break and ``torch.export`` records them as single nodes (with a
symbolic sequence length). They take and return the ordinary (B, H, T, D) layout and convert to
the C file's "planar" one inside.

Threads: the kernel runs ``torch.get_num_threads()`` Python threads (ctypes releases the GIL), each
calling the library on an interleaved share of the (batch x head, 16-row block) tasks.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native

SOURCE = Path(__file__).with_name("csrc") / "small_head_retrieval.c"
MAX_HEAD_SIZE = 8  # MAXD in the C file
LANES = 16  # L in the C file: rows are padded to a multiple of it


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.retrieval_forward.argtypes = [ptr] * 5 + [i32] * 9
    lib.retrieval_backward_q.argtypes = [ptr] * 7 + [i32] * 9
    lib.retrieval_backward_kv.argtypes = [ptr] * 8 + [i32] * 9


_library, available = native.kernel(SOURCE, _configure)


def _kernel() -> ctypes.CDLL:
    """The loaded library; a clear error where it is unavailable (e.g. an exported program run in a
    process without a compiler: decompose it with :func:`decompositions`)."""
    lib = _library()
    if lib is None:
        raise RuntimeError(
            "the small-head kernel is unavailable in this process (see the warning above); "
            "run models with causal_retrieval, or decompose exported programs with small_head.decompositions()"
        )
    return lib


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`small_head_retrieval` handles these inputs: CPU float32, head sizes <= 8."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and 1 <= q.shape[-1] <= MAX_HEAD_SIZE
        and 1 <= v.shape[-1] <= MAX_HEAD_SIZE
        and available()
    )


def _planar(x: Tensor, Tp: int) -> Tensor:
    """(B, H, T, D) -> (B * H, D, Tp) contiguous, zero padded along time."""
    B, H, T, D = x.shape
    return F.pad(x.reshape(B * H, T, D).transpose(1, 2), (0, Tp - T)).contiguous()


def _unplanar(x: Tensor, B: int, T: int) -> Tensor:
    """(B * H, D, Tp) -> (B, H, T, D)."""
    N, D, _ = x.shape
    return x[:, :, :T].transpose(1, 2).reshape(B, N // B, T, D)


def _call(fn, tensors: list[Tensor], outputs: list[Tensor], T: int, min_lag: int, max_lag: int) -> None:
    """Run one kernel: ``tensors`` (B, H, T, *) are padded to the planar layout, ``outputs`` planar."""
    N, D, Tp = tensors[0].shape
    native.run_shares(fn, tensors + outputs, (N, T, Tp, D, tensors[2].shape[1], min_lag, max_lag))


@torch.library.custom_op("memory_mosaics::small_head_forward", mutates_args=(), device_types="cpu")
def small_head_forward(q: Tensor, k: Tensor, v: Tensor, min_lag: int, max_lag: int) -> tuple[Tensor, Tensor]:
    """Equation 2 for q, k (B, H, T, D), v (B, H, T, Dv) -> out (B, H, T, Dv), lse (B, H, T).

    out[:, :, t] = sum_{s : min_lag <= t - s <= max_lag} softmax_s(q_t . k_s) v_s (max_lag < 0: no
    bound; 0 where no pair); lse the log-sum-exp of the scores, kept for the backward."""
    B, H, T, _ = q.shape
    Tp = -(-T // LANES) * LANES
    qp, kp, vp = _planar(q, Tp), _planar(k, Tp), _planar(v, Tp)
    out, lse = q.new_empty(B * H, v.shape[-1], Tp), q.new_empty(B * H, Tp)
    _call(_kernel().retrieval_forward, [qp, kp, vp], [out, lse], T, min_lag, max_lag)
    return _unplanar(out, B, T).contiguous(), lse[:, :T].reshape(B, H, T).contiguous()


@small_head_forward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, min_lag: int, max_lag: int) -> tuple[Tensor, Tensor]:
    return q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1])


@torch.library.custom_op("memory_mosaics::small_head_backward", mutates_args=(), device_types="cpu")
def small_head_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad: Tensor, min_lag: int, max_lag: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv), shaped like (q, k, v), of sum(grad * out) (out, grad (B, H, T, Dv))."""
    B, H, T, _ = q.shape
    Tp = -(-T // LANES) * LANES
    qp, kp, vp, gp = _planar(q, Tp), _planar(k, Tp), _planar(v, Tp), _planar(grad, Tp)
    lsep = F.pad(lse.reshape(B * H, T), (0, Tp - T)).contiguous()
    delta = (gp * _planar(out, Tp)).sum(dim=1).contiguous()  # (B * H, Tp): dout_t . out_t
    dq, dk, dv = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
    lib = _kernel()
    _call(lib.retrieval_backward_q, [qp, kp, vp, gp, lsep, delta], [dq], T, min_lag, max_lag)
    _call(lib.retrieval_backward_kv, [qp, kp, vp, gp, lsep, delta], [dk, dv], T, min_lag, max_lag)
    return tuple(_unplanar(g, B, T).contiguous() for g in (dq, dk, dv))


@small_head_backward.register_fake
def _(q, k, v, out, lse, grad, min_lag, max_lag) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, like the kernel's


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, min_lag, max_lag = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.lags = (min_lag, max_lag)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad: Tensor, _grad_lse: Tensor | None):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = small_head_backward(q, k, v, out, lse, grad, *ctx.lags)
    return dq, dk, dv, None, None


small_head_forward.register_autograd(_backward, setup_context=_setup_context)


def small_head_retrieval(q: Tensor, k: Tensor, v: Tensor, min_lag: int = 1, max_lag: int | None = None) -> Tensor:
    """:func:`.retrieval.causal_retrieval_reference` through the compiled kernel (see :func:`supports`).

    q, k (B, H, T, D); v (B, H, T, Dv) -> (B, H, T, Dv). Differentiable once (no double backward).
    """
    if not supports(q, k, v):
        raise ValueError("small_head_retrieval needs the compiled kernel and CPU float32 inputs with head sizes <= 8")
    return small_head_forward(q, k, v, min_lag, -1 if max_lag is None else max_lag)[0]


def _forward_reference(q: Tensor, k: Tensor, v: Tensor, min_lag: int, max_lag: int) -> tuple[Tensor, Tensor]:
    """:func:`small_head_forward` in plain torch operations (the literal (T, T) formula)."""
    from .retrieval import causal_retrieval_reference  # retrieval imports this module

    out = causal_retrieval_reference(q, k, v, min_lag, None if max_lag < 0 else max_lag)
    return out, q.new_zeros(q.shape[:-1])  # lse only serves the backward


def decompositions() -> dict:
    """``{op: torch implementation}`` for ``ExportedProgram.run_decompositions``: an exported model
    without the compiled kernel's node, e.g. for ONNX (``docs/install.md``, Export)::

        ep = torch.export.export(model, (idx,), dynamic_shapes={"idx": {1: torch.export.Dim("T", min=1)}})
        torch.onnx.export(ep.run_decompositions(small_head.decompositions()), dynamo=True).save("model.onnx")
    """
    return {torch.ops.memory_mosaics.small_head_forward.default: _forward_reference}
