"""Causal retrieval for small head sizes (D <= 8) on the CPU: a compiled kernel with its own backward.

At head sizes of 2-6 (the three-moons memory: 3 heads of size 2, or 1 of size 6) PyTorch's CPU
attention kernels cost as much per (query, pair) as at head size 16; ``csrc/small_head_retrieval.c``
vectorises over 16 queries (or 16 pairs) instead of over the head dimension (speed-ups measured by
``benchmarks/bench_small_head.py``, recorded in ``docs/benchmarks.md``).
It computes the function of :func:`.retrieval.causal_retrieval_reference` (tests compare values and
gradients).

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
``$MEMORY_MOSAICS_CACHE`` (default ``~/.cache/memory_mosaics``), keyed by the source, the flags and
the CPU, in about a second. Without a compiler, or with ``MEMORY_MOSAICS_NATIVE=0``,
:func:`available` is False and :func:`.retrieval.causal_retrieval` keeps using
``scaled_dot_product_attention``.

Threads: the kernel runs ``torch.get_num_threads()`` Python threads (ctypes releases the GIL), each
calling the library on an interleaved share of the (batch x head, 16-row block) tasks.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..io import atomic_write

SOURCE = Path(__file__).with_name("csrc") / "small_head_retrieval.c"
MAX_HEAD_SIZE = 8  # MAXD in the C file
LANES = 16  # L in the C file: rows are padded to a multiple of it
FLAG_SETS = (  # tried in order; the first that compiles is used
    ("-O3", "-march=native"),
    ("-O3",),
)


def _cpu_id() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's model and flags."""
    ident = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                ident += line
    except OSError:
        pass
    return ident


class _CompileError(RuntimeError):
    """One compiler invocation failed (the next flag set is tried)."""


def _compile(cache: Path) -> Path:
    """Compile SOURCE into a shared library under ``cache`` (atomically); return its path."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not found)")
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(source + " ".join((compiler,) + flags).encode() + _cpu_id().encode()).hexdigest()[:16]
        target = cache / f"small_head_retrieval-{key}.so"
        if target.exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)

        def compile_into(tmp: str, flags=flags) -> None:
            cmd = [compiler, *flags, "-fPIC", "-shared", "-o", tmp, str(SOURCE), "-lm"]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if result.returncode:
                raise _CompileError(f"{' '.join(cmd)}: {result.stderr.strip()[-300:]}")

        try:
            atomic_write(target, compile_into)
            return target
        except _CompileError as err:
            errors.append(str(err))
    raise RuntimeError("; ".join(errors))


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get("MEMORY_MOSAICS_NATIVE", "1") == "0":
        return None
    cache = Path(os.environ.get("MEMORY_MOSAICS_CACHE") or Path.home() / ".cache" / "memory_mosaics")
    try:
        lib = ctypes.CDLL(str(_compile(cache)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"small-head retrieval kernel unavailable, using scaled_dot_product_attention ({err})")
        return None
    ptr, i32 = ctypes.c_void_p, ctypes.c_int
    lib.retrieval_forward.argtypes = [ptr] * 5 + [i32] * 9
    lib.retrieval_backward_q.argtypes = [ptr] * 7 + [i32] * 9
    lib.retrieval_backward_kv.argtypes = [ptr] * 8 + [i32] * 9
    return lib


def available() -> bool:
    """True when the compiled kernel is loaded (compiling it on first call)."""
    return _library() is not None


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`small_head_retrieval` handles these inputs: CPU float32, head sizes <= 8."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and 1 <= q.shape[-1] <= MAX_HEAD_SIZE
        and 1 <= v.shape[-1] <= MAX_HEAD_SIZE
        and available()
    )


@lru_cache(maxsize=8)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="small-head")


def _run(fn, tensors: list[Tensor], sizes: tuple[int, ...]) -> None:
    """Call one kernel on all tasks, split over torch.get_num_threads() interleaved shares."""
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    threads = max(1, torch.get_num_threads())
    if threads == 1:
        fn(*ptrs, *sizes, 0, 1)
        return
    for f in [_pool(threads).submit(fn, *ptrs, *sizes, i, threads) for i in range(threads)]:
        f.result()


def _planar(x: Tensor, Tp: int) -> Tensor:
    """(B, H, T, D) -> (B * H, D, Tp) contiguous, zero padded along time."""
    B, H, T, D = x.shape
    return F.pad(x.reshape(B * H, T, D).transpose(1, 2), (0, Tp - T)).contiguous()


def _unplanar(x: Tensor, B: int, T: int) -> Tensor:
    """(B * H, D, Tp) -> (B, H, T, D)."""
    N, D, _ = x.shape
    return x[:, :, :T].transpose(1, 2).reshape(B, N // B, T, D)


class _SmallHeadRetrieval(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, min_lag: int, max_lag: int) -> Tensor:
        lib = _library()
        B, H, T, D = q.shape
        Tp = -(-T // LANES) * LANES
        qp, kp, vp = _planar(q, Tp), _planar(k, Tp), _planar(v, Tp)
        N, Dv = B * H, v.shape[-1]
        out = q.new_empty(N, Dv, Tp)
        lse = q.new_empty(N, Tp)
        sizes = (N, T, Tp, D, Dv, min_lag, max_lag)
        _run(lib.retrieval_forward, [qp, kp, vp, out, lse], sizes)
        ctx.save_for_backward(qp, kp, vp, out, lse)
        ctx.sizes, ctx.B = sizes, B
        return _unplanar(out, B, T)

    @staticmethod
    def backward(ctx, grad: Tensor):
        lib = _library()
        qp, kp, vp, out, lse = ctx.saved_tensors
        N, T, Tp = ctx.sizes[:3]
        gp = _planar(grad, Tp)
        delta = (gp * out).sum(dim=1).contiguous()  # (N, Tp): dout_t . out_t
        dq, dk, dv = torch.empty_like(qp), torch.empty_like(kp), torch.empty_like(vp)
        _run(lib.retrieval_backward_q, [qp, kp, vp, gp, lse, delta, dq], ctx.sizes)
        _run(lib.retrieval_backward_kv, [qp, kp, vp, gp, lse, delta, dk, dv], ctx.sizes)
        return _unplanar(dq, ctx.B, T), _unplanar(dk, ctx.B, T), _unplanar(dv, ctx.B, T), None, None


def small_head_retrieval(q: Tensor, k: Tensor, v: Tensor, min_lag: int = 1, max_lag: int | None = None) -> Tensor:
    """:func:`.retrieval.causal_retrieval_reference` through the compiled kernel (see :func:`supports`).

    q, k (B, H, T, D); v (B, H, T, Dv) -> (B, H, T, Dv). Differentiable once (no double backward).
    """
    if not supports(q, k, v):
        raise ValueError("small_head_retrieval needs the compiled kernel and CPU float32 inputs with head sizes <= 8")
    return _SmallHeadRetrieval.apply(q, k, v, min_lag, -1 if max_lag is None else max_lag)
