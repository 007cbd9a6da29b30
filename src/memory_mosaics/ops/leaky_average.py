"""Leaky average: the recurrence behind every Memory Mosaic key extractor.

    kbar_t = g_t * x_t + lambda_t * kbar_{t-1},      kbar_{-1} = state (zero by default)

with one decay ``lambda_t = exp(log_decay_t)`` per (batch, head, time) -- constant in time for the
v1 key extractor (spec section 2.1), input-dependent for the v2 gated extractor (spec section 5.2;
the gate g_t is applied by the caller to ``x``).

Implementations with the same signature:

* :func:`leaky_average_reference` follows the formula literally, one time step at a time.
* :func:`leaky_average_chunked` is exact and O(T): inside chunks of ``C`` steps it multiplies by a
  ``C x C`` decay matrix (a matmul), and it carries the state across chunks by applying the same
  function, recursively, to the chunk-final states with the chunk-level decays. Memory is
  O(T * C), never T x T.
* :func:`leaky_average_scan` is exact and elementwise: recursive doubling (Hillis-Steele), where
  pass k adds to each step the partial sum ending k steps earlier, times the product of the k
  decays in between: ceil(log2 T) passes over the sequence, no matmul. The default on devices other
  than the CPU without Triton: under ``torch.compile`` each pass is one fused, memory-bound kernel,
  but the passes are unrolled into the graph and make the model slow to compile.
* :func:`leaky_average_assoc` is exact: torch's associative scan over (log-decay, value) pairs,
  which ``torch.compile`` lowers to one Triton scan kernel on CUDA (an option; eager it is the
  slowest form).
* :func:`leaky_average_triton` is our Triton kernel (:mod:`.leaky_triton`): one pass over the sequence per
  direction, the backward's dot products in the same pass. The default on CUDA where Triton is
  installed: the fastest form measured there, eager and compiled (``docs/benchmarks.md``, GPU round 4).
* :func:`leaky_average_native` runs the literal recurrence in one compiled C pass
  (:mod:`.leaky_kernel`): the CPU default where the kernel is built, in float32 and bfloat16.
* :func:`leaky_average_matrix` multiplies by the full (T x T) decay matrix: no branch or reshape
  depends on T, so ``torch.export`` records one graph for every length >= 1 (:func:`leaky_average`
  uses it while exporting). Memory O(T^2).

:func:`leaky_average` runs the native kernel (CPU; the chunked form where it is not built), the
Triton kernel (CUDA, where Triton is installed) or the doubling scan (elsewhere) inside
:class:`LeakyAverage`, an autograd function
whose backward is another leaky average, backwards in time, so that training keeps only the output
``kbar`` (which the key normalisation keeps anyway) instead of the chunked form's intermediates:

    g~_t = g_t + lambda_{t+1} g~_{t+1}                 (dL/dx_t = g~_t)
    dL/dlog lambda_t = lambda_t <g~_t, kbar_{t-1}>     (kbar_{-1} = state)
    dL/dstate = lambda_0 g~_0

Shapes: ``x`` (B, H, T, D); ``log_decay`` broadcastable to (B, H, T) (e.g. (1, H, 1) for a per-head
constant); ``state`` (B, H, D) or None. Both return ``kbar`` (B, H, T, D); the last time step
``kbar[:, :, -1]`` is the state to carry into the next call (incremental decoding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common import exporting
from . import leaky_kernel, leaky_triton

DEFAULT_CHUNK = 16  # fastest on CPU for T in 256..4096 (benchmarks/bench_leaky_average.py --chunks)


def _broadcast_decay(x: Tensor, log_decay: Tensor) -> Tensor:
    B, H, T, _ = x.shape
    if log_decay.dim() > 3:
        raise ValueError(f"log_decay must broadcast to (B, H, T), got shape {tuple(log_decay.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # never below fp32
    return log_decay.to(dtype).expand(B, H, T)


def _constant_in_time(log_decay: Tensor) -> bool:
    return log_decay.dim() == 0 or log_decay.shape[-1] == 1


def leaky_average_reference(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> Tensor:
    """Literal recurrence ``kbar_t = x_t + exp(log_decay_t) * kbar_{t-1}`` (one step at a time)."""
    decay = _broadcast_decay(x, log_decay).exp().to(x.dtype)
    kbar = torch.zeros_like(x[:, :, 0]) if state is None else state
    out = []
    for t in range(x.shape[2]):
        kbar = x[:, :, t] + decay[:, :, t, None] * kbar
        out.append(kbar)
    return torch.stack(out, dim=2)


def leaky_average_chunked(
    x: Tensor, log_decay: Tensor, state: Tensor | None = None, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """Exact O(T) leaky average: decay matrices inside chunks, recursion across chunks."""
    if chunk < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    B, H, T, D = x.shape
    if T == 0:
        return x
    if T == 1:  # one decoding step: the recurrence itself
        return (
            x if state is None else x + _broadcast_decay(x, log_decay).exp().to(x.dtype)[..., None] * state[:, :, None]
        )
    C = min(chunk, T)
    N = -(-T // C)  # number of chunks
    pad = N * C - T
    logd = _broadcast_decay(x, log_decay)
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
        logd = F.pad(logd, (0, pad))
    xc = x.view(B, H, N, C, D)
    # cum[..., i] = sum_{j<=i} log_decay_j inside the chunk (fp32 for accuracy).
    cum = logd.reshape(B, H, N, C).cumsum(-1)
    # L[i, j] = prod_{j<l<=i} lambda_l = exp(cum_i - cum_j) for i > j, 1 on the diagonal, else 0.
    # The diagonal is set as a constant, not exp(cum_i - cum_i): its gradient terms would cancel
    # exactly in exact arithmetic but not in fp32 (visible when lambda is close to 0).
    diff = cum[..., :, None] - cum[..., None, :]
    strict = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(-1)
    L = torch.where(strict, diff.clamp(max=0.0), float("-inf")).exp()
    L = (L + torch.eye(C, dtype=L.dtype, device=x.device)).to(x.dtype)
    y = L @ xc  # (B, H, N, C, D): within-chunk sums, zero initial state

    # State entering chunk n: the state after chunk n-1, where the states after the chunks follow
    # S_n = y_n[last] + Lambda_n * S_{n-1} -- a leaky average over chunks with the chunk's total
    # decay Lambda_n = exp(cum_n[last]); computed by the same function on N-1 "time steps".
    if N > 1 or state is not None:
        first = torch.zeros_like(y[:, :, 0, 0]) if state is None else state  # (B, H, D)
        if N > 1:
            after = leaky_average_chunked(y[:, :, :-1, -1], cum[:, :, :-1, -1], state, chunk)
            incoming = torch.cat([first[:, :, None], after], dim=2)  # (B, H, N, D)
        else:
            incoming = first[:, :, None]
        y = y + cum.exp().to(x.dtype)[..., None] * incoming[:, :, :, None, :]
    return y.reshape(B, H, N * C, D)[:, :, :T]


def leaky_average_scan(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> Tensor:
    """Exact O(T log T) leaky average by recursive doubling; fp32 arithmetic for half-precision x.

    After the pass of span k, ``y_t = sum_{t-2k < s <= t} (prod_{s<l<=t} lambda_l) x_s`` and
    ``a_t = sum_{t-2k < l <= t} log lambda_l``: each pass is ``y_t += exp(a_t) y_{t-k}`` and
    ``a_t += a_{t-k}`` (terms before step 0 are zero). A decay constant in time (v1's per-head
    decay) skips ``a``: it is ``k log lambda``. The initial state enters once, times
    ``exp(cumsum(log lambda))``.
    """
    B, H, T, _ = x.shape
    logd = _broadcast_decay(x, log_decay)  # (B, H, T), fp32 or fp64
    constant = _constant_in_time(log_decay)
    a = logd[..., :1, None] if constant else logd[..., None]  # (B, H, 1 or T, 1)
    y = x.to(logd.dtype) if x.dtype in (torch.float16, torch.bfloat16) else x
    k = 1
    while k < T:
        y = y + a.exp() * F.pad(y[:, :, :-k], (0, 0, k, 0))
        a = a + a if constant else a + F.pad(a[:, :, :-k], (0, 0, k, 0))
        k *= 2
    if state is not None:
        y = y + logd.cumsum(-1).exp()[..., None] * state[:, :, None].to(y.dtype)
    return y.to(x.dtype)


def _compose(first: tuple[Tensor, Tensor], then: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Two stretches of the recurrence, each a (sum of log decays a, partial sum y) pair, as one:
    the first's sum decays through the second's steps."""
    (a1, y1), (a2, y2) = first, then
    return a1 + a2, torch.exp(a2) * y1 + y2


def associative_scan_available() -> bool:
    """Whether this torch has ``torch._higher_order_ops.associative_scan`` (the "assoc" form)."""
    try:
        from torch._higher_order_ops.associative_scan import associative_scan  # noqa: F401
    except ImportError:
        return False
    return True


def leaky_average_assoc(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> Tensor:
    """Exact leaky average by torch's associative scan of :func:`_compose` along time; fp32
    arithmetic for half-precision x. On CUDA or XPU the scan's "pointwise" mode, which
    ``torch.compile`` lowers to one Triton scan kernel; elsewhere its "generic" mode (log2 T
    passes of torch operations). The initial state enters as in :func:`leaky_average_scan`."""
    if not associative_scan_available():
        raise RuntimeError(
            f"the 'assoc' leaky average needs torch._higher_order_ops.associative_scan (torch {torch.__version__})"
        )
    from torch._higher_order_ops.associative_scan import associative_scan

    if x.shape[2] == 0:
        return x
    logd = _broadcast_decay(x, log_decay)[..., None]  # (B, H, T, 1), fp32 or fp64
    y = x.to(logd.dtype) if x.dtype in (torch.float16, torch.bfloat16) else x
    pointwise = y.device.type in ("cuda", "xpu")  # its scan kernel takes leaves of one shape
    a = logd.expand_as(y) if pointwise else logd
    _, y = associative_scan(_compose, (a, y), dim=2, combine_mode="pointwise" if pointwise else "generic")
    if state is not None:
        y = y + logd.cumsum(2).exp() * state[:, :, None].to(y.dtype)
    return y.to(x.dtype)


def leaky_average_matrix(x: Tensor, log_decay: Tensor, state: Tensor | None = None) -> Tensor:
    """Exact leaky average as one (T x T) matrix product, with no branch on T (for ``torch.export``).

    ``kbar = L x + exp(cum) state`` with ``L[t, s] = exp(cum_t - cum_s)`` for s < t (the product of
    the decays lambda_{s+1..t}), 1 for s = t, 0 above; ``cum_t = sum_{l<=t} log lambda_l`` in float64
    so that differences of long sums stay exact. Memory O(T^2) per (batch, head), like the
    (T, T) retrieval it feeds in an exported model.
    """
    T = x.shape[2]
    cum = _broadcast_decay(x, log_decay).double().cumsum(-1)  # (B, H, T)
    t = torch.arange(T, device=x.device)
    diff = (cum[..., :, None] - cum[..., None, :]).clamp(max=0.0)  # (B, H, T, T)
    L = torch.where(t[:, None] > t[None, :], diff.exp(), (t[:, None] == t[None, :]).double()).to(x.dtype)
    kbar = torch.matmul(L, x)
    if state is not None:
        kbar = kbar + cum.exp().to(x.dtype)[..., None] * state[:, :, None]
    return kbar


METHODS = ("chunked", "scan", "native", "assoc", "triton")
_KERNELS = {"native": leaky_kernel, "triton": leaky_triton}  # the methods whose backward also forms the dots
_chosen: str | None = None  # the method of the innermost :func:`use_method` block, if any


@contextlib.contextmanager
def use_method(method: str | None) -> Iterator[None]:
    """Inside the block, a leaky average called without ``method`` uses this one (one of
    ``METHODS``; None: by device, see :func:`_fast`). For benchmarks and experiments that compare the
    forms in a whole model; enter it before compiling, since a compiled graph keeps the form it traced."""
    global _chosen
    if method is not None and method not in METHODS:
        raise ValueError(f"leaky average method must be one of {METHODS}, got {method!r}")
    previous, _chosen = _chosen, method
    try:
        yield
    finally:
        _chosen = previous


def leaky_average_native(x: Tensor, log_decay: Tensor, state: Tensor | None = None, reverse: bool = False) -> Tensor:
    """The literal recurrence in one compiled pass (CPU, float32 or bfloat16: :mod:`.leaky_kernel`)."""
    return leaky_kernel.leaky_scan(x, log_decay, state, reverse)


def leaky_average_triton(x: Tensor, log_decay: Tensor, state: Tensor | None = None, reverse: bool = False) -> Tensor:
    """The literal recurrence as one Triton kernel per direction (CUDA, Triton installed: :mod:`.leaky_triton`)."""
    return leaky_triton.leaky_scan(x, log_decay, state, reverse)


def _fast(x: Tensor, log_decay: Tensor, state: Tensor | None, method: str | None, reverse: bool = False) -> Tensor:
    """``method``: "chunked" (:func:`leaky_average_chunked`), "scan" (:func:`leaky_average_scan`),
    "native" (:func:`leaky_average_native`), "assoc" (:func:`leaky_average_assoc`), "triton"
    (:func:`leaky_average_triton`), or None: the
    :func:`use_method` choice, else on the CPU the native kernel where it is built and supports x
    (else chunked), on CUDA the Triton kernel where Triton is installed, else the doubling scan.
    ``reverse``: time runs backwards
    (kbar_t = lambda_t kbar_{t+1} + x_t)."""
    method = _resolve(x, method)
    if method == "native":
        return leaky_average_native(x, log_decay, state, reverse)
    if method == "triton":
        return leaky_average_triton(x, log_decay, state, reverse)
    if reverse:
        return _fast(x.flip(2), log_decay.flip(-1), state, method).flip(2)
    if method == "chunked":
        return leaky_average_chunked(x, log_decay, state)
    if method == "assoc":
        return leaky_average_assoc(x, log_decay, state)
    return leaky_average_scan(x, log_decay, state)


def _resolve(x: Tensor, method: str | None) -> str:
    """The form that runs: ``method``, else the :func:`use_method` choice, else the device's default
    (CPU: the native kernel where it supports x, else chunked; CUDA: the Triton kernel where Triton
    is installed; elsewhere the doubling scan)."""
    if method is None and _chosen is not None:
        method = _chosen
    elif method is None and x.device.type == "cpu":
        method = "native" if leaky_kernel.supports(x) else "chunked"
    elif method is None:
        method = "triton" if leaky_triton.supports(x) else "scan"
    if method not in METHODS:
        raise ValueError(f"leaky average method must be one of {METHODS}, got {method!r}")
    return method


class LeakyAverage(torch.autograd.Function):
    """The fast leaky average (any form of :func:`_fast`, see :func:`leaky_average`) with the
    backward of the module docstring (saves kbar only)."""

    @staticmethod
    def forward(ctx, x: Tensor, log_decay: Tensor, state: Tensor | None, method: str | None = None) -> Tensor:
        method = _resolve(x, method)  # once: the backward runs the same form, whatever holds then
        kbar = _fast(x, log_decay, state, method)
        ctx.decay_shape, ctx.method = log_decay.shape, method
        ctx.heads_last = not x.is_contiguous() and x.transpose(1, 2).is_contiguous()  # x: a projection split into heads
        ctx.save_for_backward(kbar, log_decay, state)
        return kbar

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        kbar, log_decay, state = ctx.saved_tensors
        logd = _broadcast_decay(kbar, log_decay)  # (B, H, T)
        # g~ is a leaky average of g in reversed time: g~_t = lambda_{t+1} g~_{t+1} + g_t (the last
        # step's decay multiplies a zero state: a constant decay stays constant)
        shifted = log_decay if _constant_in_time(log_decay) else F.pad(logd[..., 1:], (0, 1))
        lam = logd.exp()
        if ctx.method in _KERNELS:  # g~ in x's layout, and <g~_t, kbar_{t-1}> in the same pass if needed
            kbar_for_dots = kbar if ctx.needs_input_grad[1] else None
            g, dots = _KERNELS[ctx.method].leaky_scan_grad(grad, shifted, kbar_for_dots, state, ctx.heads_last)
        else:
            g = _fast(grad, shifted, None, ctx.method, reverse=True)  # g~, (B, H, T, D)
            if ctx.needs_input_grad[1]:
                first = torch.zeros_like(kbar[:, :, :1]) if state is None else state[:, :, None]
                dots = (g * torch.cat([first, kbar[:, :, :-1]], 2)).sum(-1)  # <g~_t, kbar_{t-1}>
        grad_x = g if ctx.needs_input_grad[0] else None
        grad_decay = None
        if ctx.needs_input_grad[1]:
            full = lam * dots.to(lam.dtype)  # (B, H, T)
            grad_decay = full.sum_to_size(ctx.decay_shape).to(log_decay.dtype)
        grad_state = (lam[:, :, 0, None] * g[:, :, 0]).to(state.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_decay, grad_state, None


def leaky_average(x: Tensor, log_decay: Tensor, state: Tensor | None = None, method: str | None = None) -> Tensor:
    """The leaky average used by the layers: the fast, exact implementation (:class:`LeakyAverage`
    when gradients are needed; ``method`` as in :func:`_fast`: by default the native kernel on the
    CPU, the Triton kernel on CUDA, the doubling scan elsewhere); its branch-free matrix form while
    ``torch.export`` traces, so that the sequence length stays symbolic."""
    if exporting():
        return leaky_average_matrix(x, log_decay, state)
    if torch.is_grad_enabled():  # also at T = 1: the native kernel has no autograd formula of its own
        return LeakyAverage.apply(x, log_decay, state, method)
    return _fast(x, log_decay, state, method)
