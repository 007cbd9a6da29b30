"""The decoding-step kernels (ops/memory_step.py, csrc/memory_step.c) against the torch formulas:
the op on hand-built inputs (float64 to rounding, float32; stored pairs, read ranges, a bank shared
by the batch, the kernel's read and SDPA's), and the layers' decoding steps, which take the kernel
on the CPU, against the full forward and against their torch path, for every key, value, bandwidth
and memory variant that has a per-head decay."""

import pytest
import torch

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.common import GrowingBuffer, frozen
from memory_mosaics.layers import LeakyAverageKey, LearnedBandwidth
from memory_mosaics.ops import memory_step as ms
from memory_mosaics.ops.retrieval import memory_readout

pytestmark = pytest.mark.skipif(not ms.available(), reason="memory-step kernel not built (no C compiler)")

H, D, N = 3, 12, 20  # D not a multiple of the 8 lanes of the dot products: their tail loop runs too
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


def _inputs(B: int, bank: bool, dtype: torch.dtype, n: int = N) -> dict:
    g = lambda *shape: torch.randn(*shape, dtype=dtype)  # noqa: E731
    return dict(
        phi=g(B, H, 1, D),
        state=g(B, H, 1, D),
        decay=torch.rand(H),
        beta=torch.rand(H) * 5 + 0.5,
        keys=g(1 if bank else B, H, n, D),
        values=g(1 if bank else B, H, n, D),
        store=None if bank else ms.Store(n - 2, *g(3, B, H, 1, D), gamma=torch.rand(H), alpha=torch.rand(H) + 1),
        alpha=torch.rand(H) + 0.5,
    )


def _both(inputs: dict, start: int, stop: int, **options) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(kernel, reference) pairs: y, kbar, k, and the keys and values after the step."""
    out = []
    for fn in (ms.memory_step, ms.memory_step_reference):
        args = {name: (t.clone() if name in ("keys", "values") else t) for name, t in inputs.items()}
        args.update(options)
        y, kbar, k = fn(start=start, stop=stop, **args)
        out.append((y, kbar, k, args["keys"], args["values"]))
    return list(zip(*out))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,bank", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("start,stop", [(0, N - 1), (4, 11), (7, 7)])  # all stored pairs, a window, none
@pytest.mark.parametrize("normalize", [True, False])
def test_kernel_matches_the_formula(dtype, B, bank, start, stop, normalize):
    torch.manual_seed(0)
    with torch.no_grad():
        pairs = _both(_inputs(B, bank, dtype), start, stop, normalize=normalize)
    for fast, ref in pairs:
        torch.testing.assert_close(fast, ref, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    if start == stop:
        assert not pairs[0][0].any()  # an empty memory answers zero


@pytest.mark.parametrize("without", ["state", "alpha", "value_alpha"])
def test_kernel_without_the_optional_parts(without):
    """No leaky state (a key of the present input only), no output scale, values not normalised."""
    torch.manual_seed(0)
    inputs = _inputs(2, False, torch.float64)
    if without == "value_alpha":
        inputs["store"] = inputs["store"]._replace(alpha=None)
    else:
        inputs[without] = None
    with torch.no_grad():
        for fast, ref in _both(inputs, 0, N - 1):
            torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "threads,B,bank,sdpa",
    [
        (1, 4, False, False),  # one thread: the kernel's loop
        (2, 4, False, False),  # up to KERNEL_READ_THREADS threads: the kernel's loop at every size
        (3, 4, False, True),  # more threads, a large read: SDPA on torch's threads
        (3, 1, False, False),  # more threads, a small read: the kernel's loop
        (1, 4, True, True),  # a bank shared by the batch: SDPA reads it once for all queries
        (1, 1, True, False),  # a bank read by one query: the kernel's loop
    ],
)
def test_each_read_takes_its_path_and_agrees(threads, B, bank, sdpa, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(ms, "PARALLEL_READ", 2 * H * N * D)  # reads of two batch elements or more
    calls = []
    monkeypatch.setattr(ms, "memory_readout", lambda *a: calls.append(1) or memory_readout(*a))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            pairs = _both(_inputs(B, bank, torch.float64), 0, N - 1)
    finally:
        torch.set_num_threads(saved)
    for fast, ref in pairs:
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    assert len(calls) == 1 + sdpa  # the reference always reads with memory_readout


def test_kernel_refuses_keys_without_contiguous_rows():
    inputs = _inputs(1, True, torch.float32)
    inputs["keys"] = inputs["keys"].transpose(2, 3).contiguous().transpose(2, 3)
    with torch.no_grad(), pytest.raises(ValueError, match="rows of D contiguous values"):
        ms.memory_step(start=0, stop=N, **inputs)


@pytest.mark.parametrize(
    "change",
    ["stop past the pairs", "negative start", "slot past the pairs", "values of another shape", "a bank to store in"],
)
def test_kernel_refuses_indices_outside_its_tensors(change):
    """The C kernels index keys and values without checks of their own: the wrapper checks them."""
    inputs, start, stop = _inputs(2, False, torch.float32), 0, N
    if change == "stop past the pairs":
        stop = N + 1
    elif change == "negative start":
        start = -1
    elif change == "slot past the pairs":
        inputs["store"] = inputs["store"]._replace(slot=N)
    elif change == "values of another shape":
        inputs["values"] = inputs["values"][:, :, :-1]
    else:
        inputs["keys"], inputs["values"] = inputs["keys"][:1], inputs["values"][:1]
    with torch.no_grad(), pytest.raises(ValueError, match="memory_step"):
        ms.memory_step(start=start, stop=stop, **inputs)


def test_supports_only_what_the_kernel_does():
    x = torch.zeros(1, 1, 4)
    with torch.no_grad():
        assert ms.supports(x)
        assert not ms.supports(x.bfloat16())  # bfloat16 decoding keeps the torch operations
    assert not ms.supports(x)  # an autograd graph is recorded


VARIANTS = {
    "reference": {},
    "current key": {"key_extractor": "current"},
    "fixed ablations": {"key_extractor": "leaky_fixed", "bandwidth": "fixed", "value_peek": "fixed"},
    "peek off": {"value_peek": "off"},
    "keys not normalised": {"normalize_keys": False},
    "adaptive bandwidth": {"bandwidth": "adaptive"},
    "v2 memories": {"short_term_window": 4, "long_term_skip_min": 3, "long_term_skip_max": 5},
}


def _decode(model, idx, prompt):
    logits, state = model.prefill(idx[:, :prompt])
    return [logits] + [model.step(idx[:, t : t + 1], state) for t in range(prompt, idx.shape[1])]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decoding_with_the_kernel_equals_the_full_forward_and_the_torch_step(variant, dtype, monkeypatch):
    torch.manual_seed(0)
    config = MosaicConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0)
    model = MosaicLM(MosaicConfig(**{**config.__dict__, **VARIANTS[variant]})).to(dtype).eval()
    idx = torch.randint(0, 50, (3, 12))
    calls = []
    kernel = ms.memory_step
    monkeypatch.setattr(ms, "memory_step", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    with torch.no_grad():
        full = model(idx)
        fast = _decode(model, idx, 6)
        memories = len(calls)
        monkeypatch.setattr(ms, "available", lambda: False)
        plain = _decode(model, idx, 6)
    assert memories == 6 * 2 * (3 if "v2" in variant else 2) and len(calls) == memories  # every memory, every step
    tol = TOLERANCE[dtype] * 10
    for t, (a, b) in enumerate(zip(fast, plain)):
        torch.testing.assert_close(a, full[:, 5 + t], rtol=tol, atol=tol)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _tiny_model_and_logits(n_layer: int, T: int):
    """A tiny Mosaic in eval mode, tokens (2, T) and the full forward's logits on them."""
    torch.manual_seed(0)
    model = MosaicLM(MosaicConfig(vocab_size=50, n_layer=n_layer, n_head=2, n_embd=16, dropout=0.0)).eval()
    idx = torch.randint(0, 50, (2, T))
    with torch.no_grad():
        return model, idx, model(idx)


def test_kernel_steps_past_the_cache_capacity_grow_it():
    """Decoding without a reserved length outgrows the caches' first capacity (64 pairs): the
    kernel writes into the grown storage and keeps every earlier pair."""
    model, idx, full = _tiny_model_and_logits(n_layer=1, T=80)
    with torch.no_grad():
        logits, state = model.prefill(idx[:, :3])
        capacity = state[0].cmem.keys.capacity
        steps = [model.step(idx[:, t : t + 1], state) for t in range(3, 80)]
    assert capacity < 80 <= state[0].cmem.keys.capacity
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:], rtol=1e-4, atol=1e-5)


def test_kernel_and_torch_steps_continue_each_other(monkeypatch):
    """The two paths keep the same decoding state: steps alternating between them (as when a
    compiled step, which takes the torch path, follows eager ones) give the full forward's logits."""
    model, idx, full = _tiny_model_and_logits(n_layer=2, T=12)
    with torch.no_grad():
        _, state = model.prefill(idx[:, :5])
        for t in range(5, 12):
            monkeypatch.setattr(ms, "available", lambda on=t % 2 == 0: on)
            torch.testing.assert_close(model.step(idx[:, t : t + 1], state), full[:, t], rtol=1e-4, atol=1e-5)


def test_persistent_step_in_training_mode_keeps_its_retrieval_dropout(monkeypatch):
    """A P-mem stepped in training mode reads with its retrieval dropout, as its forward does: the
    torch path, whose dropped weights make two steps from one state differ."""
    torch.manual_seed(0)
    model = MosaicLM(MosaicConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, pmem_attn_dropout=0.5, dropout=0.0))
    pmem = model.blocks[0].pmem.train()
    calls = []
    kernel = ms.memory_step
    monkeypatch.setattr(ms, "memory_step", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    x = torch.randn(2, 1, 16)
    with torch.no_grad():
        first, second = pmem.step(x, None)[0], pmem.step(x, None)[0]
        assert not calls and not torch.equal(first, second)
        pmem.eval()
        torch.testing.assert_close(pmem.step(x, None)[0], pmem(x))
    assert len(calls) == 1


def test_gated_keys_keep_the_torch_step(monkeypatch):
    """v2's gated key has an input-dependent decay: its memories step with the torch operations."""
    torch.manual_seed(0)
    model = MosaicLM(MosaicConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, key_extractor="gated")).eval()
    monkeypatch.setattr(ms, "memory_step", lambda *a, **k: pytest.fail("kernel called"))
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        steps = _decode(model, idx, 5)
        full = model(idx)
    for t, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, 4 + t], rtol=1e-4, atol=1e-5)


def test_growing_buffer_claims_room_and_keeps_its_entries():
    start = torch.randn(1, 2, 3, 4)
    buffer = GrowingBuffer(start, min_capacity=4)
    assert buffer.claim() == 3 and buffer.length == 4 and buffer.capacity == 6  # 2 * 3 from the start
    buffer.storage[:, :, 3] = 7.0
    assert buffer.claim(5) == 4 and buffer.length == 9 and buffer.capacity == 18  # grown to 2 * (4 + 5)
    torch.testing.assert_close(buffer.view(0, 3), start)
    assert (buffer.view(3, 4) == 7.0).all()


def test_frozen_follows_the_parameters_of_the_modules_named_also():
    key, bandwidth = LeakyAverageKey(torch.nn.Linear(4, 4), 2), LearnedBandwidth(2)
    compute = lambda: key.theta + bandwidth.theta  # noqa: E731
    with torch.no_grad():
        first = frozen(key, "sum", compute, also=(bandwidth,))
        assert frozen(key, "sum", compute, also=(bandwidth,)) is first
        bandwidth.theta.add_(1.0)  # a change in the other module
        torch.testing.assert_close(frozen(key, "sum", compute, also=(bandwidth,)), first + 1.0)
