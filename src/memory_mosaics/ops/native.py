"""Compiling and loading the package's C kernels safely (``csrc/*.c`` -> a cached shared library).

A kernel's C file is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
the cache folder ``$MEMORY_MOSAICS_CACHE`` (default ``~/.cache/memory_mosaics/kernels``: a folder of its
own, apart from the data caches that a group-writable umask may leave writable by others), under a name keyed
by the source, the headers beside it (``csrc/*.h``), the compiler, the flags and the CPU. Loading a
shared library runs its code, so:

* the cache folder is created with mode 0700; a folder owned by another user, or writable by its
  group or by others, is refused (the kernel is then not used);
* the library is written atomically (a temporary file renamed into place), and the SHA-256 of its
  bytes is recorded beside it (``NAME.so.sha256``) at build time;
* before every load the file's SHA-256 is checked against the record, *before* ``dlopen``: a
  truncated, replaced or planted library (no record) is never loaded, it is rebuilt, with a warning;
* any failure (no compiler, refused folder, failed build, a library without the expected symbols)
  gives a warning and ``None``, never an exception or a crash: callers fall back to torch code.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_write, atomic_write_text

FLAG_SETS = (  # tried in order; the first that compiles is used
    ("-O3", "-march=native"),
    ("-O3",),
)


class NativeError(RuntimeError):
    """The kernel cannot be built or loaded safely (the caller falls back to torch code)."""


def cache_dir() -> Path:
    """``$MEMORY_MOSAICS_CACHE``, else ``~/.cache/memory_mosaics/kernels``."""
    return Path(os.environ.get("MEMORY_MOSAICS_CACHE") or Path.home() / ".cache" / "memory_mosaics" / "kernels")


def secure_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 if missing; refuse it if another user owns it or if its group
    or others may write into it (they could plant a library there). Returns ``path``."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise NativeError(f"{path} is not a folder")
    if st.st_uid != os.getuid():
        raise NativeError(f"kernel cache {path} is owned by another user (uid {st.st_uid}); set MEMORY_MOSAICS_CACHE")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NativeError(
            f"kernel cache {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run `chmod go-w {path}` or set MEMORY_MOSAICS_CACHE"
        )
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def library_path(source: Path, compiler: str, flags: tuple[str, ...], cache: Path) -> Path:
    """Where the library built from ``source`` with ``compiler`` and ``flags`` on this CPU is cached."""
    headers = b"".join(h.read_bytes() for h in sorted(source.parent.glob("*.h")))  # what it may include
    key = hashlib.sha256(source.read_bytes() + headers + " ".join((compiler,) + flags).encode() + _cpu_id().encode())
    return cache / f"{source.stem}-{key.hexdigest()[:16]}.so"


def _record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def verified(target: Path) -> bool:
    """True when ``target`` exists and its SHA-256 equals the one recorded at build time.

    A library without a record (planted) or whose bytes changed (truncated, replaced) is not verified;
    a missing file is silently not verified, any other mismatch warns."""
    if not target.exists():
        return False
    try:
        recorded = _record(target).read_text().strip()
    except OSError:
        warnings.warn(f"{target} has no recorded SHA-256 ({_record(target).name}): not loaded, rebuilding")
        return False
    if sha256_file(target) != recorded:
        warnings.warn(f"{target} does not match its recorded SHA-256 (truncated or replaced): not loaded, rebuilding")
        return False
    return True


def build(source: Path, target: Path, compiler: str, flags: tuple[str, ...]) -> None:
    """Compile ``source`` into ``target`` atomically, then record the SHA-256 of the bytes written."""
    digest = []

    def compile_into(tmp: str) -> None:
        cmd = [compiler, *flags, "-fPIC", "-shared", "-o", tmp, str(source), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode:
            raise NativeError(f"{' '.join(cmd)}: {result.stderr.strip()[-300:]}")
        digest.append(sha256_file(Path(tmp)))

    atomic_write(target, compile_into)
    atomic_write_text(_record(target), digest[0] + "\n")


def load(source: Path, configure: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """The library compiled from ``source`` (built or rebuilt if needed, verified before loading),
    with ``configure(lib)`` applied (argument types); ``None`` with a warning on any failure.

    ``MEMORY_MOSAICS_NATIVE=0`` disables the kernels (``None``, no warning); so does a missing C
    file, which only a copy of the Python modules lacks (a ``trust_remote_code`` folder, :mod:`..hf.remote`)."""
    if os.environ.get("MEMORY_MOSAICS_NATIVE", "1") == "0" or not source.exists():
        return None
    try:
        lib = ctypes.CDLL(str(_verified_library(source)))
        configure(lib)  # AttributeError if an expected symbol is missing
        return lib
    except (OSError, AttributeError, NativeError, subprocess.SubprocessError) as err:
        warnings.warn(f"{source.stem} kernel unavailable, using the torch implementation ({err})")
        return None


def kernel(source: Path, configure: Callable[[ctypes.CDLL], None]) -> tuple[Callable, Callable]:
    """``(library, available)`` for one C file: ``library()`` is :func:`load`'s result, built and
    loaded on the first call and cached; ``available()`` says whether it is not ``None``, a
    constant for ``torch.compile`` and ``torch.export`` (decided once, outside the traced graph)."""

    @lru_cache(maxsize=1)
    def library() -> ctypes.CDLL | None:
        return load(source, configure)

    @torch.compiler.assume_constant_result
    def available() -> bool:
        return library() is not None

    available.__doc__ = f"True when the {source.stem} kernel is loaded (compiling it on first call)."
    return library, available


def _verified_library(source: Path) -> Path:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise NativeError(f"no C compiler ({compiler!r} not found)")
    cache = secure_dir(cache_dir())
    errors = []
    for flags in FLAG_SETS:
        target = library_path(source, compiler, flags, cache)
        if verified(target):
            return target
        try:
            build(source, target, compiler, flags)
        except NativeError as err:
            errors.append(str(err))
            continue
        if verified(target):  # checked again: another process may have replaced it meanwhile
            return target
        errors.append(f"{target} changed while it was being built")
    raise NativeError("; ".join(errors))


@lru_cache(maxsize=8)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="memory-mosaics-kernel")


def heads_per_task(batch: int, heads: int) -> int:
    """How many heads one task of a (batch, heads) kernel takes: all of them (one task per batch
    element, the contiguous runs of the (B, T, H, D) layout), split only as far as it takes to give
    every one of ``torch.get_num_threads()`` threads a task."""
    chunks = min(heads, -(-max(1, torch.get_num_threads()) // batch))
    return -(-heads // chunks)


def run_shares(fn, tensors: list, sizes: tuple[int, ...]) -> None:
    """Call the kernel ``fn(*pointers, *sizes, first, stride)`` on ``torch.get_num_threads()`` threads,
    thread i with ``first = i``: each takes an interleaved share of the tasks (ctypes releases the GIL).
    A ``None`` among ``tensors`` is passed as a NULL pointer."""
    ptrs = [None if t is None else ctypes.c_void_p(t.data_ptr()) for t in tensors]
    threads = max(1, torch.get_num_threads())
    if threads == 1:
        fn(*ptrs, *sizes, 0, 1)
        return
    for f in [_pool(threads).submit(fn, *ptrs, *sizes, i, threads) for i in range(threads)]:
        f.result()
