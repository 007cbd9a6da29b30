"""Unit-length keys and queries (spec section 2.1), and the CPU kernels of :file:`csrc/unit_rows.c`.

A memory's key ``k_t`` is its raw key ``kbar_t`` (the leaky average) scaled to unit length, and its
query is the key times the bandwidth:

    r_t = 1 / ||kbar_t||,   k_t = r_t kbar_t,   q_t = beta_t k_t

Shapes: ``kbar`` (B, H, T, D); ``beta`` broadcastable to (B, H, T, 1) (one per head, or per head
and time with a bandwidth that depends on the number of visible pairs); ``k``, ``q`` (B, H, T, D).

* :func:`unit_keys_reference` is the formula in torch operations.
* :func:`unit_keys` computes the same through :class:`UnitKeys`, whose forward and backward are
  one pass each of the C kernel over the rows (the contextual memory's keys and queries, the
  persistent memory's queries), keeping ``kbar`` (which the leaky average keeps anyway) and ``r``
  for backward. Where the kernel is not built, off the CPU, and while exporting: the reference.

The same C file holds the value peek's kernels (:func:`peek_forward`, :func:`peek_backward`, used
by :class:`.peek.PeekValue`): the peek ends with the same row scaling, ``v_t = alpha_h vbar_t /
||vbar_t||``. Like the other kernels, the file is compiled on first use and cached by :mod:`.native`
(``MEMORY_MOSAICS_NATIVE=0`` disables it), and each entry point is a ``torch.library`` custom op with
a fake implementation, so ``torch.compile`` traces through them. Float32, float64 and bfloat16.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from ..common import exporting, inverse_norm
from . import native

SOURCE = Path(__file__).with_name("csrc") / "unit_rows.c"
SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    for suffix in SUFFIX.values():
        getattr(lib, f"unit_keys_fwd_{suffix}").argtypes = [ptr] * 5 + [i64, i32, i32, i32]
        getattr(lib, f"unit_keys_bwd_{suffix}").argtypes = [ptr] * 7 + [i64, i32, i32, i32]
        strided = [ptr, i64, i64, i64]  # a (B, H, T, D) tensor and its element strides along B, H, T
        getattr(lib, f"peek_fwd_{suffix}").argtypes = strided + [ptr] * 3 + [i32] * 7
        getattr(lib, f"peek_bwd_{suffix}").argtypes = strided + [ptr] * 3 + strided + [ptr] * 2 + [i32] * 7


_library, available = native.kernel(SOURCE, _configure)


def supports(x: Tensor) -> bool:
    """Whether the kernels handle ``x`` (B, H, T, D): CPU float32, float64 or bfloat16, unit stride
    along D, kernel built."""
    return x.device.type == "cpu" and x.dtype in SUFFIX and x.stride(-1) == 1 and available()


def _real(dtype: torch.dtype) -> torch.dtype:
    """The kernels' arithmetic (and per-row scalar) dtype for a storage dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _ptr(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _run(name: str, dtype: torch.dtype, *args) -> None:
    """Call ``name_<suffix>(*args, first, stride)`` on torch's thread count (:func:`.native.run_shares`)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the unit-rows kernel is unavailable in this process (see the warning above)")
    fn = getattr(lib, f"{name}_{SUFFIX[dtype]}")
    native.run_shares(lambda first, stride: fn(*args, first, stride), [], ())


# ----------------------------------------------------------------------------- keys and queries


@torch.library.custom_op("memory_mosaics::unit_keys_fwd", mutates_args=(), device_types="cpu")
def _unit_keys_fwd(x: Tensor, beta: Tensor, keys: bool) -> tuple[Tensor, Tensor, Tensor]:
    """x (..., D) contiguous; beta (rows,) contiguous, real dtype -> k (empty unless ``keys``), q, r (rows,)."""
    rows, D = x.numel() // x.shape[-1], x.shape[-1]
    k = torch.empty_like(x) if keys else x.new_empty(0)
    q, r = torch.empty_like(x), torch.empty(rows, dtype=_real(x.dtype))
    _run("unit_keys_fwd", x.dtype, _ptr(x), _ptr(beta), _ptr(k) if keys else None, _ptr(q), _ptr(r), rows, D)
    return k, q, r


@_unit_keys_fwd.register_fake
def _(x: Tensor, beta: Tensor, keys: bool) -> tuple[Tensor, Tensor, Tensor]:
    rows = x.numel() // x.shape[-1]
    k = torch.empty_like(x) if keys else x.new_empty(0)
    return k, torch.empty_like(x), x.new_empty(rows, dtype=_real(x.dtype))


@torch.library.custom_op("memory_mosaics::unit_keys_bwd", mutates_args=(), device_types="cpu")
def _unit_keys_bwd(
    x: Tensor, r: Tensor, beta: Tensor, gk: Tensor | None, gq: Tensor | None, want_dbeta: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`_unit_keys_fwd`: dx (like x) and dbeta (rows,) (empty unless ``want_dbeta``)."""
    rows, D = r.numel(), x.shape[-1]
    dx = torch.empty_like(x)
    dbeta = r.new_empty(rows if want_dbeta else 0)
    args = [_ptr(t) for t in (x, r, beta, gk, gq, dx)] + [_ptr(dbeta) if want_dbeta else None]
    _run("unit_keys_bwd", x.dtype, *args, rows, D)
    return dx, dbeta


@_unit_keys_bwd.register_fake
def _(x, r, beta, gk, gq, want_dbeta):
    return torch.empty_like(x), r.new_empty(r.numel() if want_dbeta else 0)


def unit_keys_reference(kbar: Tensor, beta: Tensor, keys: bool = True) -> tuple[Tensor | None, Tensor]:
    """(k, q) by the formula (module docstring); k is None unless ``keys``."""
    r = inverse_norm(kbar)
    return (kbar * r if keys else None), kbar * (r * beta)


class UnitKeys(torch.autograd.Function):
    """:func:`unit_keys_reference` by the kernel, forward and backward (module docstring)."""

    @staticmethod
    def forward(ctx, kbar: Tensor, beta: Tensor, keys: bool) -> tuple[Tensor, Tensor]:
        x = kbar.contiguous()
        b = beta.to(_real(x.dtype)).expand(*x.shape[:-1], 1).reshape(-1).contiguous()
        k, q, r = _unit_keys_fwd(x, b, keys)
        ctx.save_for_backward(x, r, b)
        ctx.beta_shape, ctx.beta_dtype, ctx.keys = beta.shape, beta.dtype, keys
        return k, q

    @staticmethod
    def backward(ctx, gk: Tensor | None, gq: Tensor | None):
        x, r, b = ctx.saved_tensors
        gk = gk.contiguous() if ctx.keys and gk is not None else None
        gq = None if gq is None else gq.contiguous()
        want_dbeta = ctx.needs_input_grad[1] and gq is not None
        dx, dbeta = _unit_keys_bwd(x, r, b, gk, gq, want_dbeta)
        if want_dbeta:
            dbeta = dbeta.view(*x.shape[:-1], 1).sum_to_size(ctx.beta_shape).to(ctx.beta_dtype)
        return dx, (dbeta if want_dbeta else None), None


def unit_keys(kbar: Tensor, beta: Tensor, keys: bool = True) -> tuple[Tensor | None, Tensor]:
    """Keys ``k`` (None unless ``keys``) and queries ``q = beta k`` from raw keys ``kbar`` (B, H, T, D):
    the kernel where :func:`supports` (a whole sequence; one decoding step keeps the torch operations,
    which a compiled step fuses), else :func:`unit_keys_reference`."""
    if kbar.shape[-2] > 1 and supports(kbar) and not exporting():
        k, q = UnitKeys.apply(kbar, beta, keys)
        return (k if keys else None), q
    return unit_keys_reference(kbar, beta, keys)


# ----------------------------------------------------------------------------- the value peek


def _strides(t: Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _heads(p: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if p is None else p.detach().to(_real(dtype)).contiguous()


@torch.library.custom_op("memory_mosaics::peek_fwd", mutates_args=(), device_types="cpu")
def _peek_fwd(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    B, H, T, D = v_tilde.shape
    v = v_tilde.new_empty(B, H, T, D)
    g, a = _heads(gamma, v_tilde.dtype), _heads(alpha, v_tilde.dtype)
    hc = native.heads_per_task(B, H)
    _run("peek_fwd", v_tilde.dtype, _ptr(v_tilde), *_strides(v_tilde), _ptr(g), _ptr(a), _ptr(v), B, H, T, D, hc)
    return v


@_peek_fwd.register_fake
def _(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    return v_tilde.new_empty(v_tilde.shape)


@torch.library.custom_op("memory_mosaics::peek_bwd", mutates_args=(), device_types="cpu")
def _peek_bwd(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> dv~ (laid out like v~), dgamma (H,), dalpha (H,) (zeros without alpha)."""
    B, H, T, D = v_tilde.shape
    dv = torch.empty_like(v_tilde)  # same strides as v~ (a dense view): no copy on the way to W_psi
    g, a = _heads(gamma, v_tilde.dtype), _heads(alpha, v_tilde.dtype)
    dgamma = torch.empty(B * H, dtype=_real(v_tilde.dtype))
    dalpha = torch.zeros(B * H, dtype=_real(v_tilde.dtype))
    G = grad.contiguous()
    args = [_ptr(v_tilde), *_strides(v_tilde), _ptr(g), _ptr(a), _ptr(G), _ptr(dv), *_strides(dv)]
    dalpha_ptr = _ptr(dalpha) if a is not None else None
    _run("peek_bwd", v_tilde.dtype, *args, _ptr(dgamma), dalpha_ptr, B, H, T, D, native.heads_per_task(B, H))
    return dv, dgamma.view(B, H).sum(0), dalpha.view(B, H).sum(0)


@_peek_bwd.register_fake
def _(v_tilde, gamma, alpha, grad):
    H = v_tilde.shape[1]
    real = _real(v_tilde.dtype)
    return torch.empty_like(v_tilde), v_tilde.new_empty(H, dtype=real), v_tilde.new_empty(H, dtype=real)


def peek_forward(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    """The values v (B, H, T, D), contiguous, of :func:`.peek.peek_value_reference` by the kernel."""
    return _peek_fwd(v_tilde, gamma, alpha)


def peek_backward(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dL/dv~, dL/dgamma, dL/dalpha) of :func:`peek_forward` for dL/dv = ``grad``, by the kernel;
    dL/dalpha is zeros without alpha. The per-head gradients are in the kernel's real dtype."""
    return _peek_bwd(v_tilde, gamma, alpha, grad)
