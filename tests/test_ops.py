"""Fast ops against their literal references: values and gradients."""

import sys

import pytest
import torch

from memory_mosaics.ops import (
    causal_retrieval,
    causal_retrieval_reference,
    dropout_mask,
    leaky_average_chunked,
    leaky_average_reference,
    leaky_average_scan,
    leaky_kernel,
    memory_readout,
    retrieval,
    small_head,
)
from memory_mosaics.ops.leaky_average import associative_scan_available, leaky_average, leaky_average_assoc


def _grads(fn, *tensors):
    out = fn(*tensors)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad((out * w).sum(), tensors, allow_unused=True, materialize_grads=True)


def leaky_native(x, log_decay, state=None):
    """The C kernel inside ``LeakyAverage``: its backward runs the kernel backwards in time."""
    return leaky_average(x, log_decay, state, method="native")


NATIVE = pytest.param(
    leaky_native,
    marks=pytest.mark.skipif(not leaky_kernel.available(), reason="leaky-average kernel not built (no C compiler)"),
)
ASSOC = pytest.param(
    leaky_average_assoc,
    marks=pytest.mark.skipif(not associative_scan_available(), reason="no torch associative_scan"),
)
FAST = pytest.mark.parametrize(
    "fast_op",
    [leaky_average_chunked, leaky_average_scan, NATIVE, ASSOC],
    ids=["chunked", "scan", "native", "assoc"],
)


@FAST
@pytest.mark.parametrize("T", [1, 2, 63, 64, 65, 257, 1024, 4096])
@pytest.mark.parametrize("log_lambda", [-1e-3, -0.5, -20.0])  # lambda near 1, middle, near 0
def test_leaky_average_fast_matches_reference_fp32(fast_op, T, log_lambda):
    """fp32 fast op vs the literal recurrence run in fp64 (the fp32 loop itself drifts over 4096 steps)."""
    x = torch.randn(2, 3, T, 8, requires_grad=True)
    ld = torch.tensor([log_lambda, log_lambda / 2, log_lambda * 2]).view(1, 3, 1).requires_grad_()
    x64, ld64 = x.detach().double().requires_grad_(), ld.detach().double().requires_grad_()
    ref, fast = leaky_average_reference(x64, ld64), fast_op(x, ld)
    assert (ref - fast).abs().max() / ref.abs().max().clamp(min=1) < 1e-6
    for gr, gf in zip(_grads(leaky_average_reference, x64, ld64), _grads(fast_op, x, ld)):
        assert (gr - gf).abs().max() / gr.abs().max().clamp(min=1) < 1e-4  # fp32 sums over B*T*D terms


def test_leaky_average_fp64_exact_with_state_and_time_varying_decay():
    x = torch.randn(2, 2, 300, 4, dtype=torch.float64)
    ld = -torch.rand(2, 2, 300, dtype=torch.float64) * 3
    state = torch.randn(2, 2, 4, dtype=torch.float64)
    ref = leaky_average_reference(x, ld, state)
    for chunk in (2, 7, 64):
        torch.testing.assert_close(leaky_average_chunked(x, ld, state, chunk=chunk), ref, atol=1e-11, rtol=0)
    torch.testing.assert_close(leaky_average_scan(x, ld, state), ref, atol=1e-11, rtol=0)
    if associative_scan_available():
        torch.testing.assert_close(leaky_average_assoc(x, ld, state), ref, atol=1e-11, rtol=0)
    if leaky_kernel.available():
        torch.testing.assert_close(leaky_native(x, ld, state), ref, atol=1e-11, rtol=0)


@FAST
def test_leaky_average_carries_state_across_calls(fast_op):
    x = torch.randn(1, 2, 100, 4, dtype=torch.float64)
    ld = torch.tensor([-0.1, -2.0], dtype=torch.float64).view(1, 2, 1)
    whole = fast_op(x, ld)
    first = fast_op(x[:, :, :37], ld)
    second = fast_op(x[:, :, 37:], ld, first[:, :, -1])
    torch.testing.assert_close(torch.cat([first, second], 2), whole)


@FAST
def test_leaky_average_bf16_loose(fast_op):
    x = torch.randn(1, 2, 512, 16)
    ld = torch.tensor([-0.05, -3.0]).view(1, 2, 1)
    ref = leaky_average_reference(x, ld)
    fast = fast_op(x.bfloat16(), ld)
    assert fast.dtype == torch.bfloat16
    assert (ref - fast.float()).abs().max() / ref.abs().max() < 3e-2


def test_assoc_form_says_when_torch_lacks_the_scan(monkeypatch):
    module = sys.modules[leaky_average_assoc.__module__]  # the ops package's leaky_average is the function
    monkeypatch.setattr(module, "associative_scan_available", lambda: False)
    with pytest.raises(RuntimeError, match="associative_scan"):
        leaky_average_assoc(torch.randn(1, 1, 4, 2), torch.full((1, 1, 1), -0.1))


def test_leaky_average_never_builds_a_T_by_T_tensor(monkeypatch):
    """The largest intermediate of the chunked op is O(T * chunk), not O(T^2)."""
    T, biggest = 4096, []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = real_matmul(a, b)
        biggest.append(max(a.numel(), b.numel(), out.numel()))
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    leaky_average_chunked(torch.randn(1, 1, T, 4), torch.full((1, 1, 1), -0.1))
    assert biggest and max(biggest) < T * T / 16


@pytest.fixture(params=["kernel", "sdpa"])
def retrieval_path(request, monkeypatch):
    """Run a test through the small-head kernel (where built) and through SDPA."""
    if request.param == "sdpa":
        monkeypatch.setattr(small_head, "supports", lambda *args: False)
    elif not small_head.available():
        pytest.skip("small-head kernel not built")


@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (3, None), (1, 5), (4, 9)])
def test_causal_retrieval_matches_reference(min_lag, max_lag, retrieval_path):
    q = torch.randn(2, 3, 40, 8, requires_grad=True)
    k = torch.randn(2, 3, 40, 8, requires_grad=True)
    v = torch.randn(2, 3, 40, 5, requires_grad=True)
    ref = causal_retrieval_reference(q, k, v, min_lag, max_lag)
    fast = causal_retrieval(q, k, v, min_lag, max_lag)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert fast[:, :, :min_lag].abs().max() == 0
    gr = _grads(lambda *t: causal_retrieval_reference(*t, min_lag, max_lag), q, k, v)
    gf = _grads(lambda *t: causal_retrieval(*t, min_lag, max_lag), q, k, v)
    for a, b in zip(gr, gf):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_causal_retrieval_literal_formula(retrieval_path):
    """y_t = sum_{s<t} softmax_s(q_t . k_s) v_s written with loops; y_0 = 0."""
    q, k, v = torch.randn(1, 1, 6, 3), torch.randn(1, 1, 6, 3), torch.randn(1, 1, 6, 2)
    y = causal_retrieval(q, k, v)
    assert torch.equal(y[0, 0, 0], torch.zeros(2))
    for t in range(1, 6):
        w = torch.tensor([float(q[0, 0, t] @ k[0, 0, s]) for s in range(t)]).softmax(0)
        expected = sum(w[s] * v[0, 0, s] for s in range(t))
        torch.testing.assert_close(y[0, 0, t], expected, atol=1e-6, rtol=1e-5)


def test_memory_readout_empty_memory_is_zero():
    q = torch.randn(2, 3, 1, 4)
    out = memory_readout(q, torch.zeros(2, 3, 0, 4), torch.zeros(2, 3, 0, 5))
    assert out.shape == (2, 3, 1, 5) and out.abs().max() == 0


def test_memory_readout_shared_bank_equals_per_sequence_formula():
    """A bank of batch 1 (read with the batch folded into the query axis) gives each sequence
    softmax(q k^T) v, with the gradients of that formula, the bank's summed over the batch."""
    torch.manual_seed(0)
    q = torch.randn(3, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    out = memory_readout(q, k, v)
    expected = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out, (q, k, v), g)
    grads_expected = torch.autograd.grad(expected, (q, k, v), g)
    for a, b in zip(grads, grads_expected):
        torch.testing.assert_close(a, b)


def test_bad_lags_rejected():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(ValueError, match="min_lag"):
        causal_retrieval(q, q, q, min_lag=0)
    with pytest.raises(ValueError, match="max_lag"):
        causal_retrieval(q, q, q, min_lag=3, max_lag=2)


@pytest.fixture
def plain_path(monkeypatch):
    """Force the plain three-op read (chosen by ``plain_is_faster`` on the CPU in bf16) in any dtype,
    and record its calls."""
    calls = []
    original = retrieval.plain_retrieval
    monkeypatch.setattr(retrieval, "plain_is_faster", lambda *a: True)
    monkeypatch.setattr(retrieval, "plain_retrieval", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


@pytest.mark.parametrize("min_lag", [1, 3])
def test_plain_causal_retrieval_equals_reference_fp64(min_lag, plain_path):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, d, dtype=torch.float64, requires_grad=True) for d in (8, 8, 5))
    out = causal_retrieval(q, k, v, min_lag)
    assert plain_path
    torch.testing.assert_close(out, causal_retrieval_reference(q, k, v, min_lag), atol=1e-12, rtol=0)
    gr = _grads(lambda *t: causal_retrieval_reference(*t, min_lag), q, k, v)
    gf = _grads(lambda *t: causal_retrieval(*t, min_lag), q, k, v)
    for a, b in zip(gr, gf):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bank_batch", [1, 3])
def test_bf16_reads_take_the_plain_form_and_match_fp64(bank_batch, monkeypatch):
    """On the CPU in bf16 both reads run plain_retrieval (autocast on, as in training: fp32 bank) and
    agree with the fp64 formula to bf16 accuracy, values and gradients."""
    calls = []
    original = retrieval.plain_retrieval
    monkeypatch.setattr(retrieval, "plain_retrieval", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    torch.manual_seed(0)
    q = (0.3 * torch.randn(3, 2, 20, 16)).bfloat16().requires_grad_()
    k, v = (torch.randn(bank_batch, 2, 24, 16, requires_grad=True) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = memory_readout(q, k, v)
        causal = causal_retrieval(q, q, q)
    assert len(calls) == 2 and out.dtype == causal.dtype == torch.bfloat16
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    expected = torch.softmax(q64 @ k64.transpose(-1, -2), -1) @ v64
    torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(causal.double(), causal_retrieval_reference(q64, q64, q64), atol=3e-2, rtol=3e-2)
    g = torch.randn(out.shape, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v), g.bfloat16()), torch.autograd.grad(expected, (q64, k64, v64), g)
    ):
        torch.testing.assert_close(a.double(), b, atol=0.1, rtol=0.05)


def test_fp32_reads_without_dropout_stay_on_sdpa():
    """The plain read is a CPU choice for bf16, or for fp32 with dropout; fp32 without dropout
    (the numerics of the default training and of inference) and fp64 keep SDPA."""
    q = torch.randn(2, 2, 8, 4)
    assert not retrieval.plain_is_faster(q, False, 0.0) and not retrieval.plain_is_faster(q, True, 0.0)
    assert not retrieval.plain_is_faster(q.double(), False, 0.05)
    assert retrieval.plain_is_faster(q.bfloat16(), False, 0.0)


@pytest.mark.parametrize("path", ["sdpa", "plain", "plain-F.dropout"])
def test_retrieval_dropout_is_unbiased_and_random(path, request, monkeypatch):
    """Dropout on the weights: each draw differs from the dropout-free read, their mean converges
    to it (inverted dropout keeps the expectation), for both reads, through SDPA and through the
    plain read with the counter-based mask or with ``F.dropout``."""
    if path == "sdpa":
        monkeypatch.setattr(retrieval, "plain_is_faster", lambda *a: False)
    else:
        request.getfixturevalue("plain_path")
    if path == "plain-F.dropout":
        monkeypatch.setattr(dropout_mask, "supports", lambda *a: False)
    elif path == "plain" and not dropout_mask.available():
        pytest.skip("dropout-mask kernel not built (no C compiler)")
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 3)
    for read, clean in (
        (lambda: memory_readout(q, k, v, 0.3), memory_readout(q, k, v)),
        (lambda: causal_retrieval(q, q, q, dropout_p=0.3), causal_retrieval(q, q, q)),
    ):
        draws = torch.stack([read() for _ in range(4000)])
        assert (draws[0] - clean).abs().max() > 1e-3
        torch.testing.assert_close(draws.mean(0), clean, atol=0.06, rtol=0)


def test_without_triton_the_package_imports_quietly_and_keeps_the_torch_forms():
    """Triton is optional: where it cannot be imported, the Triton leaky average says it supports
    nothing, registers no op (whose registration would print a warning) and the default stays."""
    import subprocess

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from memory_mosaics.ops import leaky_triton\n"
        "from memory_mosaics.ops.leaky_average import _resolve\n"
        "x = torch.zeros(1, 1, 3, 2)\n"
        "assert not leaky_triton.available() and not leaky_triton.supports(x)\n"
        "assert _resolve(torch.zeros(1, 1, 3, 2, device='meta'), None) == 'scan'\n"
        "assert not hasattr(torch.ops.memory_mosaics, 'leaky_scan_triton')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Triton not available" not in run.stderr, run.stderr[-2000:]
