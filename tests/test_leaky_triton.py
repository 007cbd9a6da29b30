"""The Triton leaky average (ops/leaky_triton.py) against the literal recurrence.

On a machine with a CUDA GPU the kernel runs compiled on it; elsewhere Triton's interpreter runs it on
CPU tensors (``TRITON_INTERPRET=1``, which conftest.py sets before Triton is first imported), so that
CI checks the same kernel source. Skipped without Triton. Sizes are small: the interpreter runs each program in
numpy. T 150 spans two tiles of 128 steps, D 40 two blocks of 32 lanes (the second partly masked).
"""

from __future__ import annotations

import pytest
import torch

from memory_mosaics.ops import leaky_triton
from memory_mosaics.ops.leaky_average import (
    LeakyAverage,
    _resolve,
    leaky_average,
    leaky_average_reference,
    leaky_average_scan,
    use_method,
)

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
if not CUDA and not leaky_triton._interpreting():
    pytest.skip("no CUDA GPU and TRITON_INTERPRET is not 1 (conftest.py sets it)", allow_module_level=True)

DEVICE = "cuda" if CUDA else "cpu"
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _inputs(B, H, T, D, dtype, varying=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    shape = (B, H, T) if varying else (1, H, 1)
    log_decay = -torch.rand(*shape, generator=g, dtype=torch.float64) * 2
    state = torch.randn(B, H, D, generator=g, dtype=torch.float64)
    return x.to(DEVICE, dtype), log_decay.to(DEVICE), state.to(DEVICE, dtype)


def _reference(x, log_decay, state=None):
    """The recurrence in float64 on the inputs as stored."""
    s = None if state is None else state.double()
    return leaky_average_reference(x.double(), log_decay.double(), s)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("T", "D", "varying"), [(1, 8, True), (37, 40, True), (150, 8, False)])
def test_forward_matches_recurrence(dtype, T, D, varying):
    x, log_decay, state = _inputs(1, 2, T, D, dtype, varying)
    for s in (None, state):
        y = leaky_triton.leaky_scan(x, log_decay, s)
        assert y.dtype == dtype and y.shape == x.shape
        torch.testing.assert_close(y.double(), _reference(x, log_decay, s), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("varying", [True, False])
def test_reverse_runs_the_recurrence_backwards_in_time(varying):
    x, log_decay, state = _inputs(1, 2, 150, 8, torch.float64, varying)
    y = leaky_triton.leaky_scan(x, log_decay, state, reverse=True)
    expected = _reference(x.flip(2), log_decay.flip(-1), state).flip(2)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)


def test_reads_a_projection_split_into_heads_in_place_and_writes_either_layout():
    B, T, H, D = 2, 20, 2, 40
    x = torch.randn(B, T, H, D, dtype=torch.float64, device=DEVICE).transpose(1, 2)  # heads-last strides
    log_decay = -torch.rand(1, H, 1, dtype=torch.float64, device=DEVICE)
    expected = _reference(x, log_decay)
    torch.testing.assert_close(leaky_triton.leaky_scan(x, log_decay), expected, atol=1e-12, rtol=0)
    y = leaky_triton.leaky_scan(x, log_decay, heads_last=True)
    assert y.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)
    x_strided = torch.randn(1, H, T, 2 * D, dtype=torch.float64, device=DEVICE)[..., ::2]  # no unit stride
    torch.testing.assert_close(
        leaky_triton.leaky_scan(x_strided, log_decay), _reference(x_strided, log_decay), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize(("varying", "with_state", "heads_last"), [(True, True, False), (False, False, True)])
def test_gradients_match_the_recurrence(varying, with_state, heads_last):
    """LeakyAverage with the Triton method: dL/dx, dL/dlog lambda (the kernel's dots) and dL/dstate."""
    B, H, T, D = 1, 2, 150, 40
    x, log_decay, state = _inputs(B, H, T, D, torch.float64, varying)
    if heads_last:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    leaves = [x.requires_grad_(), log_decay.requires_grad_()] + ([state.requires_grad_()] if with_state else [])
    s = state if with_state else None
    out = LeakyAverage.apply(x, log_decay, s, "triton")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    expected = torch.autograd.grad(leaky_average_reference(x, log_decay, s), leaves, grad)
    torch.testing.assert_close(out, leaky_average_reference(x, log_decay, s).detach(), atol=1e-12, rtol=0)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)


def test_gradients_with_extreme_decays_match_the_recurrence():
    """lambda ~ 0 and lambda ~ 1 (the cases of test_leaky_average_grad's gradcheck, which is too slow
    for Triton's interpreter): against autograd through the literal recurrence."""
    x = torch.randn(1, 2, 9, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    log_decay = torch.tensor([[[-40.0], [-1e-6]]], dtype=torch.float64, device=DEVICE, requires_grad=True)
    state = torch.randn(1, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = LeakyAverage.apply(x, log_decay, state, "triton")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, log_decay, state), grad)
    expected = torch.autograd.grad(leaky_average_reference(x, log_decay, state), (x, log_decay, state), grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)


def test_bfloat16_gradients_match_the_doubling_scan():
    """In the model's activation dtype, the kernel and the default GPU form agree to bf16 rounding."""
    x, log_decay, _ = _inputs(1, 2, 150, 40, torch.bfloat16, varying=True)
    grads = []
    for method in ("triton", "scan"):
        leaves = [x.detach().clone().requires_grad_(), log_decay.detach().clone().requires_grad_()]
        out = LeakyAverage.apply(*leaves, None, method)
        (out.float() ** 2).sum().backward()
        grads.append((out.float(), *(leaf.grad.float() for leaf in leaves)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0.1, rtol=0.02)


def test_method_is_selectable_by_name_and_by_use_method():
    x, log_decay, state = _inputs(1, 2, 20, 8, torch.float64)
    expected = _reference(x, log_decay, state)
    torch.testing.assert_close(leaky_average(x, log_decay, state, method="triton"), expected, atol=1e-12, rtol=0)
    with use_method("triton"), torch.no_grad():
        torch.testing.assert_close(leaky_average(x, log_decay, state), expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(leaky_average_scan(x, log_decay, state), expected, atol=1e-12, rtol=0)


def test_empty_sequence_and_unsupported_inputs():
    x, log_decay, _ = _inputs(2, 2, 0, 8, torch.float32)
    assert leaky_triton.leaky_scan(x, log_decay).shape == (2, 2, 0, 8)
    assert not leaky_triton.supports(torch.zeros(1, 1, 2, 2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="Triton leaky average needs"):
        leaky_triton.leaky_scan(torch.zeros(1, 1, 2, 2, dtype=torch.int64, device=DEVICE), log_decay)
    with pytest.raises(ValueError, match="log_decay must broadcast"):
        leaky_triton.leaky_scan(torch.zeros(1, 1, 2, 2, device=DEVICE), torch.zeros(1, 1, 1, 2, device=DEVICE))


def test_cuda_default_is_the_kernel_where_triton_runs(monkeypatch):
    """On a device other than the CPU, the default form is the Triton kernel where it supports x, else
    the doubling scan; the CPU keeps its own default; an explicit choice wins."""
    x = torch.empty(1, 1, 4, 2, device="meta")
    monkeypatch.setattr(leaky_triton, "supports", lambda x: True)
    assert _resolve(x, None) == "triton" and _resolve(x, "scan") == "scan"
    with use_method("assoc"):
        assert _resolve(x, None) == "assoc"
    assert _resolve(torch.zeros(1, 1, 4, 2), None) in ("native", "chunked")
    monkeypatch.setattr(leaky_triton, "supports", lambda x: False)
    assert _resolve(x, None) == "scan"


def test_the_capability_check_compiles_without_a_graph_break():
    """``supports`` and the argument preparation run inside compiled models and must trace whole. (On
    the GPU machine's torch 2.11, dynamo warned at the cached Triton lookup these once made, and that
    compiled model was CPU-bound: docs/benchmarks.md, GPU round 4.)"""
    x, log_decay, _ = _inputs(1, 2, 5, 8, torch.float32)
    check = torch.compile(lambda x, d: (leaky_triton.supports(x), *leaky_triton._prepared(x, d)), fullgraph=True)
    ok, x2, d2 = check(x, log_decay)
    assert ok and torch.equal(x2, x) and torch.equal(d2, log_decay.float().expand(1, 2, 5))


@pytest.mark.skipif(not CUDA, reason="compiled: on a CUDA GPU only (the interpreter is for CPU checks)")
def test_compiled_model_step_matches_eager():
    """Under torch.compile inductor launches the kernel itself (a triton_op), with no graph break:
    the same values and gradients as eager."""
    x, log_decay, _ = _inputs(4, 12, 512, 64, torch.bfloat16, varying=False)
    leaky = lambda x: LeakyAverage.apply(x, log_decay, None, "triton")  # noqa: E731
    results = []
    for fn in (leaky, torch.compile(leaky, fullgraph=True)):
        leaf = x.detach().clone().requires_grad_()
        out = fn(leaf)
        (out.float() ** 2).sum().backward()
        results.append((out, leaf.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("v2", [False, True])
def test_a_whole_model_trains_the_same_with_the_kernel(v2):
    """A Mosaic's loss and every parameter's gradient with the Triton kernel equal those with the
    doubling scan (fp64): the kernel in place, through the layers' layouts (a projection split into
    heads) and, in v2, the gated keys' time-varying decays."""
    from memory_mosaics import MosaicConfig, MosaicLM

    extra = dict(key_extractor="gated", bandwidth="adaptive", short_term_window=4) if v2 else {}
    extra |= dict(long_term_skip_min=2, long_term_skip_max=2) if v2 else {}
    torch.manual_seed(0)
    lm = MosaicLM(MosaicConfig(vocab_size=11, n_layer=1, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0, **extra))
    lm = lm.to(DEVICE, torch.float64)
    idx = torch.randint(0, 11, (2, 20), device=DEVICE)
    results = []
    for method in ("triton", "scan"):
        lm.zero_grad()
        with use_method(method):
            _, loss = lm(idx[:, :-1], idx[:, 1:])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in lm.parameters() if p.grad is not None]))
    (loss_k, grads_k), (loss_s, grads_s) = results
    torch.testing.assert_close(loss_k, loss_s, atol=1e-12, rtol=0)
    assert len(grads_k) == len(grads_s) > 0
    for a, b in zip(grads_k, grads_s):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)


AOT_SCRIPT = r"""
import inspect, json, sys
import triton
from triton.backends.compiler import GPUTarget
from memory_mosaics.ops import leaky_triton
from memory_mosaics.ops.leaky_triton_kernel import leaky_scan_kernel as kernel

names = list(inspect.signature(kernel.fn).parameters)
ELEMENT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
results = []
for arch, dtype, backward in json.loads(sys.argv[1]):
    real = "fp64" if dtype == "float64" else "fp32"
    ptrs = dict(X=ELEMENT[dtype], LOGD=real, S=ELEMENT[dtype], Y=ELEMENT[dtype], K=ELEMENT[dtype],
                KS=ELEMENT[dtype], DOT=real)
    block_d, block_t = leaky_triton._blocks(64)  # the paper's head size
    const = dict(HAS_STATE=not backward, REVERSE=backward, WITH_DOT=backward, HAS_KS=backward,
                 IS_F64=dtype == "float64", BLOCK_D=block_d, BLOCK_T=block_t)
    sig = {n: "*" + ptrs[n] if n in ptrs else "constexpr" if n in const else "i32" for n in names}
    constexprs = {(names.index(n),): v for n, v in const.items()}
    src = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
    results.append(dict(arch=arch, dtype=dtype, backward=backward, cubin=len(compiled.asm["cubin"]),
                        shared=compiled.metadata.shared))
print(json.dumps(results))
"""


def test_the_kernel_compiles_to_cubin_for_a100_and_h100_ahead_of_time():
    """The interpreter runs the kernel's Python, not Triton's compiler: here the whole NVIDIA pipeline
    (TTIR, TTGIR, LLVM IR, PTX, then ptxas to a cubin) runs on the CPU for sm_80 (A100) and sm_90
    (H100), forward and backward, every dtype, so that a kernel change that only a GPU compile would
    reject fails in CI. Its shared memory must fit one block on each (164 and 227 KiB)."""
    import json
    import os
    import subprocess
    import sys

    jobs = [(90, dtype, backward) for dtype in ("bfloat16", "float16", "float32", "float64") for backward in (0, 1)]
    jobs += [(80, "bfloat16", 0), (80, "bfloat16", 1)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT, json.dumps(jobs)], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert [(r["arch"], r["dtype"], r["backward"]) for r in results] == jobs
    for r in results:
        assert r["cubin"] > 0, r
        assert r["shared"] <= {80: 164, 90: 227}[r["arch"]] * 1024, r
