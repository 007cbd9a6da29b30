"""The unit-rows kernels (ops/unit_rows.py, csrc/unit_rows.c) against the torch formulas: unit keys
and queries, the value peek, values and gradients, in float64 (to rounding), float32 and bfloat16
(against float64 computed from the same inputs), any layout of v~, under torch.compile; and the
leaky-average kernel's strided input, head-last gradient and fused decay dots."""

import pytest
import torch

from memory_mosaics.ops import leaky_kernel, unit_rows
from memory_mosaics.ops.leaky_average import LeakyAverage, leaky_average_reference
from memory_mosaics.ops.peek import PeekValue, peek_value_reference

pytestmark = pytest.mark.skipif(not unit_rows.available(), reason="unit-rows kernel not built (no C compiler)")

B, H, T, D = 2, 3, 9, 12  # D not a multiple of the kernels' 8 lanes: the tail loop runs too
BETA_SHAPES = [(1, H, 1, 1), (1, 1, T, 1), (1, H, T, 1)]  # per head (v1), per time (adaptive), both
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _unit_keys_grads(fn, kbar, beta, keys, gk, gq):
    k, q = fn(kbar, beta, keys)
    loss = (q * gq).sum() + ((k * gk).sum() if keys else 0.0)
    return (k, q, *torch.autograd.grad(loss, (kbar, beta)))


@pytest.mark.parametrize("beta_shape", BETA_SHAPES)
@pytest.mark.parametrize("keys", [True, False])
def test_unit_keys_kernel_matches_the_formula_fp64(beta_shape, keys):
    torch.manual_seed(0)
    kbar = torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True)
    beta = (torch.rand(beta_shape, dtype=torch.float64) + 0.5).requires_grad_()
    gk, gq = torch.randn(2, B, H, T, D, dtype=torch.float64)
    fast = _unit_keys_grads(unit_rows.UnitKeys.apply, kbar, beta, keys, gk, gq)
    ref = _unit_keys_grads(unit_rows.unit_keys_reference, kbar, beta, keys, gk, gq)
    for a, b in zip(fast, ref):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_unit_keys_gradcheck():
    torch.manual_seed(1)
    kbar = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    beta = (torch.rand(1, 2, 5, 1, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, b: unit_rows.UnitKeys.apply(x, b, True), (kbar, beta))
    assert torch.autograd.gradcheck(lambda x, b: unit_rows.UnitKeys.apply(x, b, False)[1], (kbar, beta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unit_keys_kernel_low_precision_against_fp64(dtype):
    torch.manual_seed(2)
    kbar = torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)
    beta = (torch.rand(1, H, 1, 1) + 0.5).to(dtype).requires_grad_()
    gk, gq = torch.randn(2, B, H, T, D, dtype=dtype)
    fast = _unit_keys_grads(unit_rows.UnitKeys.apply, kbar, beta, True, gk, gq)
    k64, b64 = (t.detach().double().requires_grad_() for t in (kbar, beta))
    ref = _unit_keys_grads(unit_rows.unit_keys_reference, k64, b64, True, gk.double(), gq.double())
    for a, b in zip(fast, ref):
        assert a.dtype == dtype
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= TOLERANCE[dtype] * scale


def test_unit_keys_dispatch():
    """The kernel runs for sequences on the CPU; one decoding step (T = 1) keeps torch operations."""
    x = torch.randn(B, H, T, D, requires_grad=True)
    beta = torch.ones(1, H, 1, 1)
    assert unit_rows.unit_keys(x, beta)[1].grad_fn.name() == "UnitKeysBackward"
    assert "UnitKeys" not in unit_rows.unit_keys(x[:, :, :1], beta)[1].grad_fn.name()
    assert unit_rows.unit_keys(x, beta, keys=False)[0] is None


def _v_tilde(dtype, layout):
    """v~ (B, H, T, D) contiguous, or as the value projection gives it: (B, T, H, D) seen as (B, H, T, D)."""
    if layout == "heads_last":
        return torch.randn(B, T, H, D, dtype=dtype).transpose(1, 2).requires_grad_()
    return torch.randn(B, H, T, D, dtype=dtype, requires_grad=True)


def _peek_grads(fn, v_tilde, gamma, alpha, G):
    inputs = (v_tilde, gamma) + (() if alpha is None else (alpha,))
    v = fn(v_tilde, gamma, alpha)
    return (v, *torch.autograd.grad((v * G).sum(), inputs))


@pytest.mark.parametrize("layout", ["contiguous", "heads_last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_peek_kernel_matches_the_formula_fp64(layout, normalize):
    torch.manual_seed(3)
    v_tilde = _v_tilde(torch.float64, layout)
    gamma = torch.rand(H, dtype=torch.float64, requires_grad=True)
    alpha = (torch.rand(H, dtype=torch.float64) + 0.5).requires_grad_() if normalize else None
    G = torch.randn(B, H, T, D, dtype=torch.float64)
    fast = _peek_grads(PeekValue.apply, v_tilde, gamma, alpha, G)
    ref = _peek_grads(peek_value_reference, v_tilde, gamma, alpha, G)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert fast[1].stride() == v_tilde.stride()  # dL/dv~ in v~'s layout: no copy before W_psi's backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_peek_kernel_low_precision_against_fp64(dtype):
    torch.manual_seed(4)
    v_tilde = _v_tilde(dtype, "heads_last")
    gamma, alpha = torch.rand(H, requires_grad=True), (torch.rand(H) + 0.5).requires_grad_()
    G = torch.randn(B, H, T, D, dtype=dtype)
    fast = _peek_grads(PeekValue.apply, v_tilde, gamma, alpha, G)
    inputs64 = [t.detach().double().requires_grad_() for t in (v_tilde, gamma, alpha)]
    ref = _peek_grads(peek_value_reference, *inputs64, G.double())
    for a, b in zip(fast, ref):
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= TOLERANCE[dtype] * scale


def test_peek_value_without_grad_uses_the_kernel_and_agrees():
    from memory_mosaics.ops.peek import peek_value

    v_tilde, gamma, alpha = torch.randn(B, T, H, D).transpose(1, 2), torch.rand(H), torch.rand(H) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(peek_value(v_tilde, gamma, alpha), peek_value_reference(v_tilde, gamma, alpha))


def test_kernels_traced_by_torch_compile_without_graph_break():
    def fn(kbar, beta, v_tilde, gamma, alpha):
        k, q = unit_rows.UnitKeys.apply(kbar, beta, True)
        return (k * q).sum() + PeekValue.apply(v_tilde, gamma, alpha).sum()

    torch.manual_seed(5)
    args = [
        torch.randn(B, H, T, D, requires_grad=True),
        torch.rand(1, H, 1, 1, requires_grad=True),
        _v_tilde(torch.float32, "heads_last"),
        torch.rand(H, requires_grad=True),
        torch.rand(H, requires_grad=True),
    ]
    eager = torch.autograd.grad(fn(*args), args)
    compiled = torch.autograd.grad(torch.compile(fn, fullgraph=True, backend="aot_eager")(*args), args)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not leaky_kernel.available(), reason="leaky-average kernel not built (no C compiler)")
@pytest.mark.parametrize("decay_shape", [(1, H, 1), (B, H, T)])
def test_leaky_kernel_reads_heads_last_input_and_writes_its_gradient_alike(decay_shape):
    """x laid out as (B, T, H, D) (a projection split into heads), a state, constant or per-step
    decays: values and gradients (x, decay, state) equal the literal recurrence; dL/dx has x's layout."""
    torch.manual_seed(6)
    x = torch.randn(B, T, H, D, dtype=torch.float64).transpose(1, 2).requires_grad_()
    log_decay = (-torch.rand(decay_shape, dtype=torch.float64)).requires_grad_()
    state = torch.randn(B, H, D, dtype=torch.float64, requires_grad=True)
    G = torch.randn(B, H, T, D, dtype=torch.float64)
    inputs = (x, log_decay, state)
    fast = LeakyAverage.apply(x, log_decay, state, "native")
    ref = leaky_average_reference(x, log_decay, state)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((fast * G).sum(), inputs)
    for a, b in zip(grads, torch.autograd.grad((ref * G).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert grads[0].stride() == x.stride()


@pytest.mark.skipif(not leaky_kernel.available(), reason="leaky-average kernel not built (no C compiler)")
def test_thread_count_does_not_change_the_kernels():
    """Tasks split by batch element and, with more threads than batch elements, by ranges of heads
    (here 3 heads in 2 ranges): the same numbers as one thread."""
    torch.manual_seed(7)
    v_tilde = _v_tilde(torch.float32, "heads_last").detach()
    kbar, G = torch.randn(2, B, H, T, D)
    gamma, alpha, log_decay = torch.rand(H), torch.rand(H) + 0.5, -torch.rand(1, H, 1)

    def run():
        return (
            unit_rows.peek_forward(v_tilde, gamma, alpha),
            *unit_rows.peek_backward(v_tilde, gamma, alpha, G),
            leaky_kernel.leaky_scan(v_tilde, log_decay),
            *leaky_kernel.leaky_scan_grad(G, log_decay, kbar, None, True),
        )

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


@pytest.mark.skipif(not leaky_kernel.available(), reason="leaky-average kernel not built (no C compiler)")
def test_leaky_kernel_backward_without_a_decay_gradient():
    """Decays kept fixed (the "leaky_fixed" ablation): the backward skips the dot products and dL/dx
    still equals the literal recurrence's."""
    torch.manual_seed(8)
    x = torch.randn(B, T, H, D, dtype=torch.float64).transpose(1, 2).requires_grad_()
    log_decay = -torch.rand(1, H, 1, dtype=torch.float64)
    G = torch.randn(B, H, T, D, dtype=torch.float64)
    (fast,) = torch.autograd.grad((LeakyAverage.apply(x, log_decay, None, "native") * G).sum(), x)
    (ref,) = torch.autograd.grad((leaky_average_reference(x, log_decay) * G).sum(), x)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
