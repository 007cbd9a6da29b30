"""One decoding step of a memory: everything between its projections (spec sections 2.1-2.2).

For one new input, with ``phi = W_phi x`` and (contextual memory) ``psi = v~ = W_psi x``:

    kbar = phi + lambda_h kbar_prev                 (the leaky average; no state: kbar = phi)
    k = kbar / ||kbar|| (normalize, else kbar),   q = beta_h k
    keys[slot] = pending k,   values[slot] = peek(pending v~, psi)      (contextual memory only:
                                                     the previous input's pair, completed by psi)
    y = alpha_h sum_{s in [start, stop)} softmax_s(q . keys[s]) values[s]

Shapes: ``phi``, ``state`` and the :class:`Store`'s ``v_tilde`` (psi), ``pending_key``,
``pending_value`` (B, H, 1, D); ``keys``, ``values`` (B or 1, H, N, D), the pairs read (a memory's
stored pairs, or the persistent memory's bank); ``decay``, ``beta``, ``alpha`` and the store's
``gamma``, ``alpha`` (H,). Returns y (B, H, 1, D), kbar and k (B, H, 1, D).

* :func:`memory_step_reference` is the formula in the torch operations the layers use for a whole
  sequence (:func:`.unit_rows.unit_keys_reference`, :func:`.peek.peek_mix`, :func:`.retrieval.memory_readout`).
* :func:`memory_step` does the same with the C kernels of :file:`csrc/memory_step.c`: one call for
  the row-wise work (key, query, stored pair: some 20 torch operators on (B, H, 1, D) tensors, whose
  dispatch costs more than their arithmetic at batch 1) and one for the read, or SDPA for the reads
  it does better (see :func:`memory_step`). Decoding only (no autograd, not traced): :func:`supports`
  says when the layers may call it; the kernels are built on first use like the package's others
  (:mod:`.native`; ``MEMORY_MOSAICS_NATIVE=0`` disables them). Float32 and float64.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from . import native
from .peek import peek_mix
from .retrieval import memory_readout
from .unit_rows import unit_keys_reference

SOURCE = Path(__file__).with_name("csrc") / "memory_step.c"
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
# The kernel's read runs on one thread. With up to KERNEL_READ_THREADS torch threads it is the read
# at every size: on 2 threads it measured faster than SDPA in whole decoding steps up to 12.6M
# elements (batch 8 of the paper's size with 2048 pairs; docs/benchmarks.md, round 5). With more
# threads, reads of PARALLEL_READ elements or more go to SDPA, which splits them among the threads
# (that it is then faster is a hypothesis: not measured on this project's 2-core machine).
KERNEL_READ_THREADS = 2
PARALLEL_READ = 1 << 19


def _configure(lib: ctypes.CDLL) -> None:
    ptr, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    for suffix in SUFFIX.values():
        getattr(lib, f"memory_step_{suffix}").argtypes = [ptr] * 10 + [i64] * 3 + [ptr] * 4 + [i32] * 4
        getattr(lib, f"memory_read_{suffix}").argtypes = [ptr] * 5 + [i64] * 4 + [i32] * 3


_library, available = native.kernel(SOURCE, _configure)


class Store(NamedTuple):
    """The contextual memory's pair to complete and store before its read: ``keys[slot] =
    pending_key``, ``values[slot] = peek(pending_value, v_tilde)`` with ``gamma`` and the values'
    ``alpha`` (None: not normalised); ``v_tilde`` (B, H, 1, D) is this input's W_psi x."""

    slot: int
    v_tilde: Tensor
    pending_key: Tensor
    pending_value: Tensor
    gamma: Tensor
    alpha: Tensor | None


def supports(x: Tensor) -> bool:
    """Whether :func:`memory_step` may take a step on input x: CPU float32 or float64, no autograd
    graph recorded, not traced by ``torch.compile`` or ``torch.export``, kernel built."""
    return (
        x.device.type == "cpu"
        and x.dtype in SUFFIX
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and available()
    )


def memory_step_reference(
    phi: Tensor,
    state: Tensor | None,
    decay: Tensor,
    beta: Tensor,
    keys: Tensor,
    values: Tensor,
    start: int,
    stop: int,
    *,
    alpha: Tensor | None = None,
    normalize: bool = True,
    store: Store | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, kbar, k) by the torch formulas (module docstring), with ``store``'s pair written into
    ``keys`` and ``values`` before the read."""
    heads = lambda p: p.view(1, -1, 1, 1).to(phi.dtype)  # noqa: E731
    kbar = phi if state is None else phi + heads(decay) * state
    if normalize:
        k, q = unit_keys_reference(kbar, heads(beta))
    else:
        k, q = kbar, kbar * heads(beta)
    if store is not None:
        keys[:, :, store.slot : store.slot + 1] = store.pending_key
        values[:, :, store.slot : store.slot + 1] = peek_mix(
            store.pending_value, store.v_tilde, store.gamma, store.alpha
        )
    return _sdpa_read(q, keys[:, :, start:stop], values[:, :, start:stop], alpha), kbar, k


def _sdpa_read(q: Tensor, keys: Tensor, values: Tensor, alpha: Tensor | None) -> Tensor:
    """alpha_h times the read of all the pairs given, by :func:`.retrieval.memory_readout` (SDPA)."""
    y = memory_readout(q, keys, values)
    return y if alpha is None else y * alpha.view(1, -1, 1, 1).to(y.dtype)


def _ptr(t: Tensor | None) -> int | None:
    """The address of t's data (ctypes passes an int as the c_void_p argument), NULL for None."""
    return None if t is None else t.data_ptr()


def _rows(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """t laid out row after row in ``dtype`` (a copy only if it is not already)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.to(dtype).contiguous()


def memory_step(
    phi: Tensor,
    state: Tensor | None,
    decay: Tensor,
    beta: Tensor,
    keys: Tensor,
    values: Tensor,
    start: int,
    stop: int,
    *,
    alpha: Tensor | None = None,
    normalize: bool = True,
    store: Store | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`memory_step_reference` by the kernels, where :func:`supports` ``phi``. ``keys`` and
    ``values`` (a :class:`..common.GrowingBuffer`'s storage, or a bank) have rows of D contiguous
    values and equal strides, and hold ``slot`` when storing. The read is the kernel's, on one
    thread, or :func:`.retrieval.memory_readout` (SDPA) for pairs shared by a batch (one product
    over all its queries) and, when torch has more than ``KERNEL_READ_THREADS`` threads, for reads
    of at least ``PARALLEL_READ`` elements (split among them)."""
    B, H, _, D = phi.shape
    slot, psi, pending_key, pending_value, gamma, value_alpha = Store(0, *(None,) * 5) if store is None else store
    if keys.stride(3) != 1 or keys.stride(2) != D or values.stride() != keys.stride():
        raise ValueError("memory_step needs keys and values with rows of D contiguous values and equal strides")
    stop = max(start, stop)
    N = keys.shape[2]  # the kernels index keys and values: every index is checked here
    if keys.shape != values.shape or keys.shape[0] not in (1, B) or keys.shape[1] != H or keys.shape[3] != D:
        shapes = f"keys {tuple(keys.shape)} and values {tuple(values.shape)}"
        raise ValueError(f"memory_step: {shapes} do not fit phi {(B, H, 1, D)}")
    if store is not None and keys.shape[0] != B:
        raise ValueError("memory_step stores pairs into keys and values of the batch's size, not into a bank")
    if not 0 <= start <= stop <= N or (store is not None and not 0 <= slot < N):
        raise ValueError(f"memory_step: read [{start}, {stop}) or stored pair {slot} outside {N} pairs")
    kbar, k, q = phi.new_empty(3, B, H, 1, D)
    rows = [_rows(t, phi.dtype) for t in (phi, psi, state, pending_key, pending_value)]
    per_head = [_rows(p, phi.dtype) for p in (decay, beta, gamma, value_alpha)]
    lib, suffix = _library(), SUFFIX[phi.dtype]
    getattr(lib, f"memory_step_{suffix}")(
        *(_ptr(t) for t in (*rows, kbar, k, q, keys, values)),
        keys.stride(0),
        keys.stride(1),
        slot,
        *(_ptr(p) for p in per_head),
        int(normalize),
        B,
        H,
        D,
    )
    shared = keys.shape[0] == 1 and B > 1  # a bank read by the batch: SDPA reads it once for all B queries
    many = torch.get_num_threads() > KERNEL_READ_THREADS
    if shared or (many and B * H * (stop - start) * D >= PARALLEL_READ):
        return _sdpa_read(q, keys[:, :, start:stop], values[:, :, start:stop], alpha), kbar, k
    y, alpha = torch.empty_like(q), _rows(alpha, phi.dtype)  # held here: the kernel reads their memory
    getattr(lib, f"memory_read_{suffix}")(
        *(_ptr(t) for t in (q, keys, values, alpha, y)),
        keys.stride(0) if keys.shape[0] > 1 else 0,
        keys.stride(1),
        start,
        stop,
        B,
        H,
        D,
    )
    return y, kbar, k
