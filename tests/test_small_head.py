"""The compiled small-head retrieval kernel against the literal fp64 reference (values, gradients)."""

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from memory_mosaics.ops import causal_retrieval, causal_retrieval_reference, native, small_head

needs_kernel = pytest.mark.skipif(not small_head.available(), reason="no C compiler: small-head kernel not built")


def _inputs(B, H, T, D, Dv, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64) * scale
    k = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=torch.float64)
    return q, k, v


def _value_and_grads(fn, q, k, v):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad((out * w).sum(), (q, k, v)))


@needs_kernel
@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 100])
@pytest.mark.parametrize("D,Dv", [(1, 1), (2, 2), (6, 6), (8, 3), (3, 8)])
@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (3, None), (1, 5), (4, 9)])
def test_kernel_matches_fp64_reference(T, D, Dv, min_lag, max_lag):
    q, k, v = _inputs(2, 3, T, D, Dv, scale=3.0)
    ref = _value_and_grads(lambda *t: causal_retrieval_reference(*t, min_lag, max_lag), q, k, v)
    fast = _value_and_grads(
        lambda *t: small_head.small_head_retrieval(*t, min_lag, max_lag), q.float(), k.float(), v.float()
    )
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-4)
    assert fast[0][:, :, :min_lag].abs().max() == 0  # no stored pair yet: output exactly 0


@needs_kernel
@pytest.mark.parametrize("max_lag", [None, 300])
def test_kernel_long_rows(max_lag):
    """800-step rows (the three-moons window), with and without a window of 300 pairs."""
    q, k, v = _inputs(1, 2, 800, 2, 2, scale=3.0, seed=5)
    ref = _value_and_grads(lambda *t: causal_retrieval_reference(*t, 1, max_lag), q, k, v)
    fast = _value_and_grads(lambda *t: small_head.small_head_retrieval(*t, 1, max_lag), q.float(), k.float(), v.float())
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-4)


@needs_kernel
def test_kernel_sharp_kernel_regression():
    """Three-moons bandwidth (beta = 50 folded in the query): scores in the hundreds stay exact."""
    q, k, v = _inputs(4, 3, 300, 2, 2, scale=50.0, seed=3)
    ref = _value_and_grads(causal_retrieval_reference, q, k, v)
    fast = _value_and_grads(small_head.small_head_retrieval, q.float(), k.float(), v.float())
    for a, b in zip(fast, ref):
        scale = b.abs().max()
        torch.testing.assert_close(a.double() / scale, b / scale, atol=1e-4, rtol=0)


@needs_kernel
def test_kernel_threads_give_identical_results():
    q, k, v = (t.float() for t in _inputs(3, 2, 130, 2, 2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _value_and_grads(small_head.small_head_retrieval, q, k, v)
        torch.set_num_threads(2)
        two = _value_and_grads(small_head.small_head_retrieval, q, k, v)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@needs_kernel
def test_causal_retrieval_dispatch():
    """causal_retrieval uses the kernel exactly where it applies (CPU fp32, head size <= 8, no dropout)."""
    q, k, v = (t.float() for t in _inputs(1, 2, 40, 4, 4))
    assert torch.equal(causal_retrieval(q, k, v), small_head.small_head_retrieval(q, k, v))
    assert not small_head.supports(q.double(), k.double(), v.double())
    big = torch.randn(1, 2, 40, 16)
    assert not small_head.supports(big, big, big)
    with pytest.raises(ValueError, match="head sizes <= 8"):
        small_head.small_head_retrieval(big, big, big)


def test_without_compiler_falls_back(tmp_path):
    """No compiler: a warning, available() is False, and causal_retrieval still answers (SDPA)."""
    code = (
        "import torch, warnings\n"
        "from memory_mosaics.ops import causal_retrieval, causal_retrieval_reference, small_head\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert not small_head.available()\n"
        "assert any('unavailable' in str(x.message) for x in w)\n"
        "q = torch.randn(1, 1, 20, 2)\n"
        "torch.testing.assert_close(causal_retrieval(q, q, q), causal_retrieval_reference(q, q, q))\n"
        "try:\n"  # the op itself (e.g. in an exported program) says what to do instead
        "    torch.ops.memory_mosaics.small_head_forward(q, q, q, 1, -1)\n"
        "    raise SystemExit('no error')\n"
        "except RuntimeError as err:\n"
        "    assert 'decompositions()' in str(err), err\n"
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), MEMORY_MOSAICS_CACHE=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


# ---------------------------------------------------------------- the kernel cache (ops/native.py)

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")


def _load(cache, monkeypatch, **env):
    """native.load of the small-head kernel with the cache folder ``cache``: (library or None, warnings)."""
    monkeypatch.setenv("MEMORY_MOSAICS_CACHE", str(cache))
    monkeypatch.delenv("MEMORY_MOSAICS_NATIVE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = native.load(small_head.SOURCE, small_head._configure)
    return lib, [str(w.message) for w in caught]


def _cached_library(cache) -> Path:
    (path,) = [p for p in Path(cache).glob("small_head_retrieval-*.so")]
    return path


def _compile_plant(tmp_path, body: str) -> bytes:
    """A shared library built from ``body`` (C), as bytes."""
    src, out = tmp_path / "plant.c", tmp_path / "plant.so"
    src.write_text(body)
    subprocess.run([os.environ.get("CC") or "cc", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


@needs_cc
def test_cache_folder_created_private_and_hash_recorded(tmp_path, monkeypatch):
    cache = tmp_path / "new" / "cache"
    lib, messages = _load(cache, monkeypatch)
    assert lib is not None and not messages
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    so = _cached_library(cache)
    recorded = so.with_name(so.name + ".sha256").read_text().strip()
    assert recorded == hashlib.sha256(so.read_bytes()).hexdigest()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # written atomically


@needs_cc
def test_planted_library_is_never_loaded(tmp_path, monkeypatch):
    """A library placed under the expected name (no recorded hash) is rebuilt, its constructor never runs."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    marker = tmp_path / "constructor-ran"
    plant = _compile_plant(
        tmp_path,
        f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{ fopen("{marker}", "w"); }}\n',
    )
    target = native.library_path(small_head.SOURCE, os.environ.get("CC") or "cc", native.FLAG_SETS[0], cache)
    target.write_bytes(plant)
    lib, messages = _load(cache, monkeypatch)
    assert any("no recorded SHA-256" in m for m in messages)
    assert lib is not None and not marker.exists()
    assert target.read_bytes() != plant  # replaced by a fresh build
    # A planted library with a forged record is refused too when its symbols are missing: a warning, no crash.
    # (In a fresh folder: overwriting the loaded library in place would crash this process, SIGBUS.)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    forged = other / target.name
    forged.write_bytes(plant)
    forged.with_name(forged.name + ".sha256").write_text(hashlib.sha256(plant).hexdigest())
    lib, messages = _load(other, monkeypatch)
    assert lib is None and any("unavailable" in m for m in messages)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler named cc")
def test_truncated_library_is_rebuilt_not_loaded(tmp_path):
    """A truncated .so (it killed the process with SIGBUS when loaded) fails the hash check before
    dlopen: rebuilt with a warning, or, when the compiler fails, the torch path with a warning."""
    cache = tmp_path / "cache"
    env = dict(os.environ, MEMORY_MOSAICS_CACHE=str(cache), MEMORY_MOSAICS_NATIVE="1", CC="cc")
    failing = tmp_path / "bin" / "cc"  # the same compiler name (the cache key), but every build fails
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "from memory_mosaics.ops import causal_retrieval, causal_retrieval_reference, small_head\n"
        "print('available', small_head.available())\n"
        "q = torch.randn(1, 2, 40, 2)\n"
        "torch.testing.assert_close(causal_retrieval(q, q, q), causal_retrieval_reference(q, q, q))\n"
    )
    run = lambda **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True, timeout=300
    )
    first = run()
    assert first.returncode == 0 and "available True" in first.stdout, first.stderr
    so = _cached_library(cache)
    so.write_bytes(so.read_bytes()[: so.stat().st_size // 3])
    broken_compiler = run(PATH=f"{failing.parent}{os.pathsep}{env['PATH']}")
    assert broken_compiler.returncode == 0, broken_compiler.stderr
    assert (
        "available False" in broken_compiler.stdout and "does not match its recorded SHA-256" in broken_compiler.stderr
    )
    rebuilt = run()
    assert rebuilt.returncode == 0 and "available True" in rebuilt.stdout, rebuilt.stderr
    assert "does not match its recorded SHA-256" in rebuilt.stderr


@needs_cc
def test_unsafe_cache_folder_refused(tmp_path, monkeypatch):
    """A folder that others may write into, or that another user owns, is not used (torch path, warning)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    lib, messages = _load(shared, monkeypatch)
    assert lib is None and any("writable by other users" in m for m in messages)
    assert not list(shared.iterdir())  # nothing built there either
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    uid = os.getuid()
    monkeypatch.setattr(native.os, "getuid", lambda: uid + 1)
    lib, messages = _load(foreign, monkeypatch)
    assert lib is None and any("owned by another user" in m for m in messages)
