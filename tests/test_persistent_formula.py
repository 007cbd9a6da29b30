"""The persistent memory (P-mem) against its formulas (docs/architecture.md, "Persistent memory, the
formulas"), written out literally in float64, and its reading as a two-layer network."""

import torch

from memory_mosaics.models import MosaicConfig, MosaicLM


def _pmem(d=12, H=3, N=7):
    """The P-mem of a v1 Mosaic block, in float64, with every per-head scalar moved off its initial value."""
    model = MosaicLM(MosaicConfig(vocab_size=32, n_layer=1, n_head=H, n_embd=d, pmem_size=N, dropout=0.0))
    pmem = model.blocks[0].pmem.double().eval()
    with torch.no_grad():
        pmem.key.theta.copy_(torch.tensor([0.03, 0.12, 0.4]))  # lambda = exp(-10 |theta|)
        pmem.bandwidth.theta.copy_(torch.tensor([0.05, 0.15, 0.7]))  # s = exp(min(10 theta, 5)): 0.7 hits the cap
        pmem.theta.copy_(torch.tensor([-0.05, 0.02, 0.1]))  # alpha = exp(10 theta)
    return pmem


def test_pmem_matches_literal_formulas():
    """kbar_t = W_phi x_t + lambda_h kbar_{t-1};  q_t = s_h^2 kbar_t / ||kbar_t||;
    y_t = W_o concat_h alpha_h sum_i softmax_i(q_t . kappa_{h,i}) u_{h,i}."""
    d, H, N, T = 12, 3, 7, 9
    Dh = d // H
    pmem = _pmem(d, H, N)
    x = torch.randn(2, T, d, dtype=torch.float64)
    y = pmem(x)

    W_phi, W_o = pmem.key.proj.weight, pmem.c_proj.weight
    lam = torch.exp(-10 * pmem.key.theta.abs())
    s = torch.exp(torch.clamp(10 * pmem.bandwidth.theta, max=5.0))
    alpha = torch.exp(10 * pmem.theta)
    kappa, u = pmem.kappa[0], pmem.u[0]  # (H, N, Dh)
    expected = torch.zeros(2, T, d, dtype=torch.float64)
    for b in range(2):
        heads = []
        for h in range(H):
            rows = slice(h * Dh, (h + 1) * Dh)
            kbar = torch.zeros(Dh, dtype=torch.float64)
            out = []
            for t in range(T):
                kbar = W_phi[rows] @ x[b, t] + lam[h] * kbar
                q = s[h] ** 2 * kbar / kbar.norm()
                scores = torch.stack([q @ kappa[h, i] for i in range(N)])
                w = (scores - scores.max()).exp() / (scores - scores.max()).exp().sum()  # softmax, stably
                out.append(alpha[h] * sum(w[i] * u[h, i] for i in range(N)))
            heads.append(torch.stack(out))  # (T, Dh)
        expected[b] = torch.cat(heads, dim=1) @ W_o.T
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_pmem_is_a_two_layer_network_with_a_softmax_nonlinearity():
    """Per head: y = alpha U^T softmax(K q) with the unit query; K (N, Dh) and U (N, Dh) are the first
    and second layers of a network of N hidden units, the softmax its nonlinearity (and with the
    bandwidth folded into K, alpha into U, an ordinary two-layer network on the normalised key)."""
    d, H, N, T = 12, 3, 7, 5
    pmem = _pmem(d, H, N)
    x = torch.randn(1, T, d, dtype=torch.float64)
    kbar, _ = pmem.key(x, None)  # (1, H, T, Dh)
    unit = kbar / kbar.norm(dim=-1, keepdim=True)
    beta = torch.exp(torch.clamp(10 * pmem.bandwidth.theta, max=5.0)) ** 2
    alpha = torch.exp(10 * pmem.theta)
    heads = []
    for h in range(H):
        first = beta[h] * pmem.kappa[0, h]  # (N, Dh): layer 1 with the bandwidth folded in
        second = alpha[h] * pmem.u[0, h]  # (N, Dh): layer 2 with alpha folded in
        hidden = torch.softmax(unit[0, h] @ first.T, dim=-1)  # (T, N): the N hidden units
        heads.append(hidden @ second)
    torch.testing.assert_close(pmem(x)[0], torch.cat(heads, dim=1) @ pmem.c_proj.weight.T, atol=1e-12, rtol=1e-12)
    # the hidden units are the retrieval weights the model reports
    weights = pmem.retrieval_weights(x)[0]
    torch.testing.assert_close(weights[1], torch.softmax(unit[0, 1] @ (beta[1] * pmem.kappa[0, 1]).T, dim=-1))


def test_pmem_weight_count_is_2d2_plus_2Nd():
    """W_phi and W_o (d x d each) plus N keys and N values of Dh per head: 2 d^2 + 2 N d (+ 3 scalars per head)."""
    d, H, N = 12, 3, 7
    pmem = _pmem(d, H, N)
    matrices = sum(p.numel() for p in pmem.parameters() if p.dim() >= 2)
    scalars = sum(p.numel() for p in pmem.parameters() if p.dim() < 2)
    assert matrices == 2 * d * d + 2 * N * d
    assert scalars == 3 * H
