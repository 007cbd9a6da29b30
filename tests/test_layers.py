"""Layers against the spec's formulas written out naively."""

import math

import pytest
import torch
import torch.nn as nn

from memory_mosaics.layers import (
    AdaptiveBandwidth,
    ComplexLinear,
    ContextualMemory,
    FixedBandwidth,
    GatedLeakyKey,
    LeakyAverageKey,
    LearnedBandwidth,
    LinearKey,
    PeekValue,
    make_bandwidth,
)
from memory_mosaics.models import MosaicConfig, MosaicLM


def _language_cmem(d=12, H=3, **kw):
    lin = lambda: nn.Linear(d, d, bias=False)  # noqa: E731
    return ContextualMemory(LeakyAverageKey(lin(), H), PeekValue(lin(), H), LearnedBandwidth(H), lin(), **kw)


def test_cmem_first_output_is_exactly_zero():
    mem = _language_cmem()
    y = mem(torch.randn(2, 9, 12))
    assert torch.equal(y[:, 0], torch.zeros(2, 12))
    assert y[:, 1:].abs().min() > 0


def test_cmem_matches_literal_formula():
    """y_t = c_proj(concat_h sum_{s<t} softmax_s(beta_h k_t.k_s) v_s), every piece from the spec."""
    d, H, T = 12, 3, 10
    Dh = d // H
    mem = _language_cmem(d, H).double()
    with torch.no_grad():
        mem.value.gamma.copy_(torch.tensor([0.2, 0.5, 0.9]))
    x = torch.randn(1, T, d, dtype=torch.float64)
    y = mem(x)[0]

    Wk, Wv, Wo = mem.key.proj.weight, mem.value.proj.weight, mem.c_proj.weight
    lam = torch.exp(-10 * mem.key.theta.abs())
    s = torch.exp(torch.clamp(10 * mem.bandwidth.theta, max=5))
    gamma, alpha = mem.value.gamma, torch.exp(10 * mem.value.theta)
    heads = []
    for h in range(H):
        sl = slice(h * Dh, (h + 1) * Dh)
        kt = [x[0, t] @ Wk[sl].T for t in range(T)]
        vt = [x[0, t] @ Wv[sl].T for t in range(T)] + [torch.zeros(Dh, dtype=x.dtype)]
        kbar, keys = torch.zeros(Dh, dtype=x.dtype), []
        for t in range(T):
            kbar = kt[t] + lam[h] * kbar
            keys.append(s[h] * kbar / kbar.norm())
        vals = []
        for t in range(T):
            vbar = gamma[h] * vt[t] + (1 - gamma[h]) * vt[t + 1]
            vals.append(alpha[h] * vbar / vbar.norm())
        out = [torch.zeros(Dh, dtype=x.dtype)]
        for t in range(1, T):
            w = torch.softmax(torch.stack([keys[t] @ keys[u] for u in range(t)]), 0)
            out.append(sum(w[u] * vals[u] for u in range(t)))
        heads.append(torch.stack(out))
    expected = torch.cat(heads, dim=1) @ Wo.T
    torch.testing.assert_close(y, expected, atol=1e-10, rtol=1e-10)


def test_cmem_no_future_leakage_and_windows():
    for kw in ({}, {"min_lag": 3}, {"max_lag": 4}, {"min_lag": 2, "max_lag": 5}):
        mem = _language_cmem(**kw)
        x = torch.randn(1, 16, 12)
        y = mem(x)
        for t in range(15):
            x2 = x.clone()
            x2[:, t + 1 :] = torch.randn(1, 15 - t, 12)
            torch.testing.assert_close(mem(x2)[:, : t + 1], y[:, : t + 1])


def test_cmem_windowed_step_matches_forward():
    for kw in ({"min_lag": 3}, {"max_lag": 4}, {"min_lag": 2, "max_lag": 5}):
        mem = _language_cmem(**kw).eval()
        mem.bandwidth = AdaptiveBandwidth(3)
        x = torch.randn(2, 20, 12)
        full = mem(x)
        y, state = mem.prefill(x[:, :7])
        steps = [mem.step(x[:, t : t + 1], state) for t in range(7, 20)]
        torch.testing.assert_close(torch.cat([y, *steps], 1), full, atol=1e-5, rtol=1e-5)


def test_gated_key_is_a_gated_leaky_average():
    key = GatedLeakyKey(nn.Linear(6, 6, bias=False), 6, 2).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64)
    kbar, state = key(x)
    g = key.gate(x).exp()
    lam = torch.exp(-key.decay(x).abs())
    kt = key.proj(x).view(1, 5, 2, 3)
    prev = torch.zeros(2, 3, dtype=x.dtype)
    for t in range(5):
        prev = g[0, t, :, None] * kt[0, t] + lam[0, t, :, None] * prev
        torch.testing.assert_close(kbar[0, :, t], prev)
    torch.testing.assert_close(state, kbar[:, :, -1])


def test_adaptive_bandwidth_formula():
    bw = AdaptiveBandwidth(2)
    n = torch.tensor([0.0, 1.0, 10.0, 100.0])
    beta = bw(n)
    b = math.exp(1.5)
    expected = b * n ** (1 / 3) + b
    torch.testing.assert_close(beta, expected.expand(2, 4))


def test_make_bandwidth():
    assert isinstance(make_bandwidth(50, 3), FixedBandwidth)
    assert isinstance(make_bandwidth("learned", 3), LearnedBandwidth)
    with pytest.raises(ValueError, match="bandwidth"):
        make_bandwidth("wide", 3)
    with pytest.raises(ValueError, match="positive"):
        make_bandwidth(-1, 3)


def test_complex_linear_is_complex_multiplication():
    lin = ComplexLinear(6, 6)
    w = torch.complex(lin.re, lin.im)
    z = torch.randn(4, 3, dtype=torch.complex64)
    x = torch.view_as_real(z).reshape(4, 6)
    y = torch.view_as_real(z @ w.T).reshape(4, 6)
    torch.testing.assert_close(lin(x), y, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in lin.parameters()) == 18


def test_three_moons_style_memory_plugs_in():
    """Complex maps, no normalisation, fixed beta, pure peek: v_t = W_psi x_{t+1}."""
    mem = ContextualMemory(
        LinearKey(ComplexLinear(6, 6), 3),
        PeekValue(ComplexLinear(6, 6), 3, gamma=0.0, normalize=False),
        FixedBandwidth(50.0),
        ComplexLinear(6, 6),
        normalize_keys=False,
    )
    assert sum(p.numel() for p in mem.parameters()) == 54
    x = torch.randn(1, 8, 6)
    v, _ = mem.value(x)
    torch.testing.assert_close(v[:, :, :-1], mem.value.project(x)[:, :, 1:])


def test_block_has_exactly_12_d_squared_weights():
    for d, H in ((64, 4), (96, 8), (768, 12)):
        cfg = MosaicConfig(vocab_size=10, n_layer=1, n_head=H, n_embd=d)
        assert cfg.pmem_size == int(3.5 * d)
        block = MosaicLM(cfg).blocks[0]
        weights = sum(p.numel() for p in block.parameters() if p.dim() >= 2)
        assert weights == 12 * d * d
        # the rest: two LayerNorm weights (as GPT-2) and 7 scalars per head
        assert sum(p.numel() for p in block.parameters()) == 12 * d * d + 2 * d + 7 * H
