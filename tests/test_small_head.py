"""The compiled small-head retrieval kernel against the literal fp64 reference (values, gradients)."""

import os
import subprocess
import sys

import pytest
import torch

from memory_mosaics.ops import causal_retrieval, causal_retrieval_reference, small_head

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
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), MEMORY_MOSAICS_CACHE=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
