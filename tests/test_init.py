"""The reference initialisation of MosaicLM, tensor by tensor, against the authors' formulas.

The authors' ``StackAssoMem`` ties ``emb.weight = head.weight`` and then calls
``apply(_init_weights)``, which draws the shared tensor first as an Embedding (N(0, 1)) and then as
the head Linear (N(0, 1/fan_in), fan_in = d): the tied matrix starts at N(0, 1/d). Every other
Linear is N(0, 1/fan_in), every c_proj N(0, 1/(fan_in n_layer)); the per-head scalars and the
P-mem banks keep their constructor values (memory-mosaics.md sections 2.1-2.3).
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from memory_mosaics import MosaicConfig, MosaicLM

D, H, L = 256, 8, 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MosaicLM(MosaicConfig(vocab_size=4096, n_layer=L, n_head=H, n_embd=D, pmem_size=448))


def _std_close(t: torch.Tensor, std: float, rel: float = 0.05) -> None:
    assert abs(t.float().mean().item()) < 4 * std / math.sqrt(t.numel())  # mean 0 within 4 standard errors
    assert t.float().std().item() == pytest.approx(std, rel=rel)


def test_tied_embedding_is_n01_over_d(model):
    _std_close(model.wte.weight, 1 / math.sqrt(D))


def test_linears_and_output_projections(model):
    seen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            fan_in = module.weight.shape[1]
            std = 1 / math.sqrt(fan_in * (L if name.endswith("c_proj") else 1))
            _std_close(module.weight, std)
            seen += 1
    assert seen == L * 5  # per block: W_phi, W_psi, c_proj (C-mem); W_phi', c_proj' (P-mem)


def test_per_head_scalars_and_banks(model):
    for block in model.blocks:
        c, p = block.cmem, block.pmem
        lin = torch.linspace(0.5, 5.0, H) / 10  # leaky-average theta: lambda = exp(-10 |theta|)
        torch.testing.assert_close(c.key.theta.data, lin)
        torch.testing.assert_close(p.key.theta.data, lin)
        torch.testing.assert_close(c.bandwidth.theta.data, torch.full((H,), 0.1))  # kernel_beta = ones / 10
        torch.testing.assert_close(p.bandwidth.theta.data, torch.full((H,), 0.1))
        torch.testing.assert_close(c.value.theta.data, torch.full((H,), -0.05))  # value_beta = -0.5 / 10
        torch.testing.assert_close(p.theta.data, torch.full((H,), -0.05))
        assert ((c.value.gamma > 0) & (c.value.gamma < 1)).all()  # coef ~ U(0, 1)
        for bank in (p.kappa, p.u):  # M_k, M_v ~ N(0, 1/head_dim)
            assert bank.shape == (1, H, 448, D // H)
            _std_close(bank, 1 / math.sqrt(D // H))
        for ln in (block.ln_1, block.ln_2):
            assert torch.equal(ln.weight.data, torch.ones(D))


@pytest.mark.parametrize("depth", [1, 4])
def test_fresh_model_loss_on_random_tokens_is_ln_v(depth):
    V = 50304
    torch.manual_seed(depth)
    model = MosaicLM(
        MosaicConfig(vocab_size=V, n_layer=depth, n_head=4, n_embd=64, dropout=0.0, attn_dropout=0.0)
    ).eval()
    idx = torch.randint(0, V, (4, 129))
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(V)) < 0.05


def test_unit_embedding_option_is_not_the_reference():
    V = 4096
    torch.manual_seed(0)
    model = MosaicLM(
        MosaicConfig(
            vocab_size=V, n_layer=1, n_head=4, n_embd=128, embedding_init="unit", dropout=0.0, attn_dropout=0.0
        )
    ).eval()
    _std_close(model.wte.weight, 1.0)
    idx = torch.randint(0, V, (4, 129))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    assert loss.item() > math.log(V) + 2.0  # the N(0, 1) tie starts far above chance
    with pytest.raises(ValueError, match="embedding_init"):
        MosaicConfig(embedding_init="normal")


def test_eft_dropouts_are_separate():
    """The authors' language model ("eft"): no retrieval dropout in the C-mem, 0.05 in the P-mem."""
    model = MosaicLM(
        MosaicConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, attn_dropout=0.0, pmem_attn_dropout=0.05)
    )
    assert model.blocks[0].cmem.attn_dropout == 0.0 and model.blocks[0].pmem.attn_dropout == 0.05
    assert MosaicConfig(attn_dropout=0.1).pmem_attn_dropout == 0.1  # default: the same rate for both
