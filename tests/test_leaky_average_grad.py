"""The leaky average's own backward (a leaky average backwards in time) against autograd through
the literal recurrence, and what it keeps for backward."""

import importlib

import pytest
import torch

from memory_mosaics.ops import leaky_kernel, leaky_triton
from memory_mosaics.ops.leaky_average import METHODS, LeakyAverage, leaky_average, leaky_average_reference

NO_KERNEL = pytest.mark.skipif(not leaky_kernel.available(), reason="leaky-average kernel not built (no C compiler)")
NO_TRITON = pytest.mark.skipif(
    not leaky_triton.supports(torch.zeros(1)), reason="Triton not installed (or TRITON_INTERPRET unset without a GPU)"
)
MARKS = {"native": NO_KERNEL, "triton": NO_TRITON}
EVERY_METHOD = [pytest.param(m, marks=MARKS[m]) if m in MARKS else m for m in METHODS]
NOT_TRITON = [p for p, m in zip(EVERY_METHOD, METHODS) if m != "triton"]


def grads(fn, inputs, g):
    out = torch.autograd.grad(fn(*inputs), inputs, g, allow_unused=True)
    return [torch.zeros_like(i) if d is None else d for d, i in zip(out, inputs)]


@pytest.mark.parametrize("method", EVERY_METHOD)
@pytest.mark.parametrize("T", [2, 5, 17, 300])
@pytest.mark.parametrize("per_time", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_backward_equals_autograd_of_the_recurrence(method, T, per_time, with_state):
    torch.manual_seed(T)
    x = torch.randn(2, 3, T, 4, dtype=torch.float64, requires_grad=True)
    shape = (2, 3, T) if per_time else (1, 3, 1)
    log_decay = (-3 * torch.rand(shape, dtype=torch.float64)).requires_grad_()
    inputs = [x, log_decay] + ([torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)] if with_state else [])
    g = torch.randn(2, 3, T, 4, dtype=torch.float64)
    fast = grads(lambda *a: leaky_average(*a, method=method), inputs, g)
    ref = grads(lambda *a: leaky_average_reference(*a), inputs, g)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", NOT_TRITON)  # Triton: tests/test_leaky_triton.py (gradcheck is slow interpreted)
def test_gradcheck_with_extreme_decays(method):
    x = torch.randn(1, 2, 9, 3, dtype=torch.float64, requires_grad=True)
    log_decay = torch.tensor([[[-40.0], [-1e-6]]], dtype=torch.float64, requires_grad=True)  # lambda ~ 0 and ~ 1
    state = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: LeakyAverage.apply(*a, method), (x, log_decay, state))


def test_backward_keeps_only_the_output():
    x = torch.randn(1, 2, 64, 8, requires_grad=True)
    log_decay = torch.full((1, 2, 1), -0.5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kbar = leaky_average(x, log_decay)
    big = [t for t in saved if t.numel() >= kbar.numel()]
    assert len(big) == 1 and big[0].data_ptr() == kbar.data_ptr()


@pytest.mark.parametrize("chosen", EVERY_METHOD)
def test_use_method_picks_the_form_of_a_whole_layer(chosen, monkeypatch):
    """Inside ``use_method`` a layer's leaky averages (forward and backward) run the chosen form;
    outside it, the CPU default again (the native kernel where built, else chunked)."""
    from memory_mosaics.layers.extractors import LeakyAverageKey

    module = importlib.import_module(
        "memory_mosaics.ops.leaky_average"
    )  # the package re-exports a function of this name
    calls = []
    for name in METHODS:
        original = getattr(module, f"leaky_average_{name}")
        monkeypatch.setattr(module, f"leaky_average_{name}", lambda *a, n=name, f=original: calls.append(n) or f(*a))
    for name, kernel in (("native", leaky_kernel), ("triton", leaky_triton)):  # the kernels' reversed averages
        grad = kernel.leaky_scan_grad
        monkeypatch.setattr(kernel, "leaky_scan_grad", lambda *a, n=name, f=grad: calls.append(n) or f(*a))
    layer = LeakyAverageKey(torch.nn.Linear(16, 16), 2)
    x = torch.randn(2, 9, 16, requires_grad=True)
    with module.use_method(chosen):
        layer(x)[0].sum().backward()
    assert calls == [chosen, chosen]  # forward, then the backward's reversed average
    calls.clear()
    layer(x)[0].sum().backward()
    default = "native" if leaky_kernel.available() else "chunked"
    assert calls == [default, default]


def test_use_method_rejects_an_unknown_form():
    from memory_mosaics.ops.leaky_average import use_method

    with pytest.raises(ValueError, match="leaky average method"):
        with use_method("fft"):
            pass
