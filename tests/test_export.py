"""torch.compile and torch.export of Mosaic models (issue 10, item 4): the small-head kernel is a
torch.library custom op, so compiling has no graph break and an exported program keeps the sequence
length symbolic (any T >= 1); compiled and exported models answer like the eager one."""

import importlib.util
import sys

import pytest
import torch
from helpers import v2_switches

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.ops import causal_retrieval, causal_retrieval_reference, small_head
from memory_mosaics.ops.leaky_average import leaky_average_matrix, leaky_average_reference

needs_kernel = pytest.mark.skipif(not small_head.available(), reason="no C compiler: small-head kernel not built")
VOCAB = 40
V2 = v2_switches(window=6, skip_min=3, skip_max=5)


def _model(head_size: int, v2: bool, n_layer: int = 1) -> MosaicLM:
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, n_layer=n_layer, n_head=2, n_embd=2 * head_size, dropout=0.0, attn_dropout=0.0)
    return MosaicLM(MosaicConfig(**sizes, **(V2 if v2 else {}))).eval()


def _tokens(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def _export(model: MosaicLM) -> torch.export.ExportedProgram:
    T = torch.export.Dim("T", min=1, max=4096)
    return torch.export.export(model, (_tokens(37),), dynamic_shapes={"idx": {1: T}})


def _custom_ops(ep: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes if "memory_mosaics" in str(n.target)}


# ---------------------------------------------------------------- the custom op itself


@needs_kernel
@pytest.mark.parametrize("T,max_lag", [(1, -1), (17, -1), (40, 6)])
def test_custom_op_registration(T, max_lag):
    """opcheck: schema, fake (meta) implementation, autograd registration and tracing agree with the kernel."""
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, d, generator=g, requires_grad=True) for d in (4, 4, 3))
    torch.library.opcheck(small_head.small_head_forward, (q, k, v, 1, max_lag))
    out, lse = small_head.small_head_forward(q, k, v, 1, max_lag)
    grad = torch.randn_like(out)
    args = (q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), grad, 1, max_lag)
    torch.library.opcheck(small_head.small_head_backward, args)


def test_leaky_average_matrix_matches_reference():
    """The export form of equation 2.1's recurrence: values and gradients, with a state, a
    time-varying decay (v2) and decays close to 0 (float64 running sums keep long rows exact)."""
    g = torch.Generator().manual_seed(0)
    for T in (1, 2, 17, 200):
        x = torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64)
        for log_decay in (-torch.rand(1, 3, 1, generator=g) * 8, -torch.rand(2, 3, T, generator=g) * 3):
            state = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
            x_, d_, s_ = (t.clone().requires_grad_() for t in (x, log_decay.double(), state))
            ref = leaky_average_reference(x_, d_, s_)
            w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
            ref_grads = torch.autograd.grad((ref * w).sum(), (x_, d_, s_))
            out = leaky_average_matrix(x_, d_, s_)
            grads = torch.autograd.grad((out * w).sum(), (x_, d_, s_))
            torch.testing.assert_close(out, ref)
            for a, b in zip(grads, ref_grads):
                torch.testing.assert_close(a, b)
            f32 = leaky_average_matrix(x.float(), log_decay, state.float())
            torch.testing.assert_close(f32.double(), ref.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_size", [4, 16])
@pytest.mark.parametrize("min_lag,max_lag", [(1, None), (3, None), (2, 5)])
def test_exported_retrieval_any_length(head_size, min_lag, max_lag):
    """causal_retrieval exported once answers every length, including T <= min_lag (all zero)."""

    class Retrieval(torch.nn.Module):
        def forward(self, q, k, v):
            return causal_retrieval(q, k, v, min_lag, max_lag)

    example = tuple(torch.randn(2, 3, 20, head_size) for _ in range(3))
    T = torch.export.Dim("T", min=1, max=4096)
    ep = torch.export.export(Retrieval(), example, dynamic_shapes={n: {2: T} for n in ("q", "k", "v")})
    for length in (1, 2, 3, 16, 33):
        q, k, v = (torch.randn(2, 3, length, head_size) for _ in range(3))
        ref = causal_retrieval_reference(q, k, v, min_lag, max_lag)
        torch.testing.assert_close(ep.module()(q, k, v), ref, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("head_size", [4, 64])
def test_compile_fullgraph_no_graph_break(head_size):
    """Zero graph breaks in the Mosaic forward at head size 4 (the kernel) and 64 (SDPA)."""
    model = _model(head_size, v2=False, n_layer=2)
    explanation = torch._dynamo.explain(model)(_tokens(37))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("head_size,v2", [(4, False), (4, True)])
def test_compiled_equals_eager_with_gradients(head_size, v2):
    """torch.compile(fullgraph=True) through AOT autograd (the custom op's fake implementation and
    autograd formula): logits, loss and gradients as in eager mode."""
    _assert_compiled_step_equals_eager(_model(head_size, v2))  # eval mode: v2's long-term lag m fixed at m_lo


def _assert_compiled_step_equals_eager(model: MosaicLM, precision: str = "fp32") -> None:
    """torch.compile(fullgraph=True, aot_eager) of ``model``: the eager logits, loss and gradients.
    Both passes start from the same seed, so a model with dropout draws the same masks in both;
    ``precision`` "bf16" runs them under CPU autocast (gradients compared to bf16 accuracy)."""
    idx, tgt = _tokens(33), _tokens(33, seed=2)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, loss = fn(idx, tgt)
        loss.backward()
        results.append((logits.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch._dynamo.reset()
    (eager_logits, eager_loss, eager_grads), (compiled_logits, compiled_loss, compiled_grads) = results
    tol = dict(atol=1e-5, rtol=1e-4) if precision == "fp32" else dict(atol=2e-3, rtol=5e-2)  # bf16 casts move
    torch.testing.assert_close(compiled_logits, eager_logits, **tol)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-6, rtol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_compiled_model_takes_the_fast_paths_where_is_exporting_lies(monkeypatch, v2):
    """Before torch 2.13, dynamo traced ``torch.compiler.is_exporting()`` as True under torch.compile
    (pytorch/pytorch#176347): simulated here, a compiled training step must still run the fast leaky
    average and retrieval, never the export forms (O(T^2) decay matrix, (T, T) mask)."""
    ops = sys.modules["memory_mosaics.ops.leaky_average"], sys.modules["memory_mosaics.ops.retrieval"]
    export_forms = []
    for module, name in ((ops[0], "leaky_average_matrix"), (ops[1], "_masked_retrieval")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name: (export_forms.append(name), real(*a))[1])
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: torch.compiler.is_compiling())
    torch._dynamo.reset()
    model = _model(64, v2).train(not v2)  # v2 in eval mode: its training draws m with Python's random (a graph break)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    _, loss = compiled(_tokens(40), _tokens(40, seed=2))
    loss.backward()
    torch._dynamo.reset()
    assert export_forms == []
    assert torch.export.export(_model(64, v2), (_tokens(9),)) is not None and export_forms  # export: its forms


def test_v2_training_compiles_as_one_graph():
    """v2's long-term skip m is drawn in every training forward: under torch.compile it is a tensor
    read through a mask, so the training forward is one graph for every m (no graph break)."""
    explanation = torch._dynamo.explain(_model(4, v2=True, n_layer=2).train())(_tokens(37))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_v2_compiled_training_equals_eager():
    """With m_lo = m_hi the draw is deterministic: the compiled training step (tensor m, masked
    retrieval) gives eager mode's loss and gradients (int m, shifted retrieval)."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=8, dropout=0.0, attn_dropout=0.0)
    model = MosaicLM(MosaicConfig(**sizes, **{**V2, "long_term_skip_min": 4, "long_term_skip_max": 4})).train()
    _assert_compiled_step_equals_eager(model)


@pytest.mark.slow
@pytest.mark.parametrize("head_size", [4, 64])
def test_inductor_compiled_equals_eager(head_size):
    """The default backend (inductor, generated C++): same logits as eager mode."""
    model = _model(head_size, v2=False)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(_tokens(37)), model(_tokens(37)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head_size", [4, 16])
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_exported_equals_eager_any_length(head_size, v2):
    """torch.export with a symbolic length: one program for T = 1 .. 4096, equal to eager mode at
    lengths that are and are not multiples of the leaky average's chunk (16) or of the kernel's lanes."""
    model = _model(head_size, v2)
    ep = _export(model)
    uses_kernel = head_size <= small_head.MAX_HEAD_SIZE and small_head.available()
    assert _custom_ops(ep) == ({"memory_mosaics.small_head_forward.default"} if uses_kernel else set())
    with torch.no_grad():
        for T in (1, 2, 5, 16, 37, 70):
            idx = _tokens(T, seed=T)
            torch.testing.assert_close(ep.module()(idx), model(idx), atol=2e-5, rtol=1e-4)


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs onnx, onnxscript and onnxruntime",
)
@pytest.mark.parametrize("head_size,v2", [(4, True), pytest.param(16, False, marks=pytest.mark.slow)])
def test_onnx_export_equals_eager(tmp_path, head_size, v2):
    """ONNX (through the exported program, the kernel decomposed into torch operations): onnxruntime
    answers like eager mode at several lengths."""
    import onnxruntime

    model = _model(head_size, v2)
    ep = _export(model).run_decompositions(small_head.decompositions())
    assert not _custom_ops(ep)
    torch.onnx.export(ep, dynamo=True).save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    name = session.get_inputs()[0].name
    with torch.no_grad():
        for T in (1, 16, 37):
            idx = _tokens(T, seed=T)
            (logits,) = session.run(None, {name: idx.numpy()})
            torch.testing.assert_close(torch.from_numpy(logits), model(idx), atol=2e-5, rtol=1e-4)


SWITCHES = [
    dict(key_extractor="leaky_fixed"),
    dict(key_extractor="current"),
    dict(value_peek="fixed"),
    dict(value_peek="off"),
    dict(bandwidth="fixed"),
    dict(normalize_keys=False),
    dict(persistent="mlp"),
]


@pytest.mark.slow
@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("head_size", [4, 16])
def test_every_switch_exports(head_size, switch):
    """Every configuration switch of MosaicConfig (the v1 and v2 ones above, and the ablations here)."""
    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=2 * head_size, dropout=0.0, attn_dropout=0.0)
    model = MosaicLM(MosaicConfig(**sizes, **switch)).eval()
    ep = _export(model)
    with torch.no_grad():
        for T in (1, 17, 40):
            idx = _tokens(T, seed=T)
            torch.testing.assert_close(ep.module()(idx), model(idx), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_training_with_dropout_equals_eager(precision):
    """The CPU kernels of a training step with dropout (native leaky average, plain reads with the
    counter-based masks, seeded from torch's generator) trace as one graph, and with the same seed the
    compiled step draws the same masks as eager mode: same logits, loss and gradients."""
    sizes = dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.1, attn_dropout=0.1)
    torch.manual_seed(0)
    _assert_compiled_step_equals_eager(MosaicLM(MosaicConfig(**sizes)).train(), precision)
