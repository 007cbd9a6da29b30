"""Ablation switches of MosaicConfig: each changes the computation as named, and each variant keeps
the model-level guarantees (no future leakage, decoding == full forward, weights saved with buffers)."""

import math

import pytest
import torch

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.layers import GeluMLP, LinearKey, PersistentMemory, SwiGLU, make_bandwidth

V, D, H = 53, 32, 4

SWITCHES = {
    "keys-current": dict(key_extractor="current"),
    "keys-fixed-decay": dict(key_extractor="leaky_fixed"),
    "peek-off": dict(value_peek="off"),
    "peek-fixed": dict(value_peek="fixed"),
    "bandwidth-fixed": dict(bandwidth="fixed"),
    "pmem-mlp": dict(persistent="mlp"),
    "unnormalized-keys": dict(normalize_keys=False),
}


def mosaic(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_layer=2, n_head=H, n_embd=D, dropout=0.0, attn_dropout=0.0)
    return MosaicLM(MosaicConfig(**{**cfg, **kw})).eval()


def cmem(model):
    return model.blocks[0].cmem


@pytest.mark.parametrize("name", SWITCHES)
def test_every_switch_keeps_causality_and_decoding(name):
    model = mosaic(**SWITCHES[name])
    seq = torch.randint(0, V, (2, 30))
    full = model(seq)
    changed = seq.clone()
    changed[:, 20:] = torch.randint(0, V, (2, 10))
    torch.testing.assert_close(model(changed)[:, :20], full[:, :20])
    logits, state = model.prefill(seq[:, :12])
    torch.testing.assert_close(logits, full[:, 11], atol=1e-5, rtol=1e-4)
    for t in range(12, 30):
        torch.testing.assert_close(model.step(seq[:, t : t + 1], state), full[:, t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", SWITCHES)
def test_every_switch_saves_and_loads_its_fixed_scalars(tmp_path, name):
    model = mosaic(seed=1, **SWITCHES[name])
    model.save_pretrained(tmp_path)
    torch.manual_seed(2)  # a different draw of gamma ~ U(0, 1) if it were not saved
    loaded = MosaicLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, V, (2, 16))
    assert torch.equal(loaded(idx), model(idx))


def test_current_keys_depend_on_the_current_input_only():
    x = torch.randn(1, 10, D)
    x2 = x.clone()
    x2[:, 4] += 1.0  # perturb x_4
    for switch, changes_later in (("current", False), ("leaky", True)):
        key = cmem(mosaic(key_extractor=switch)).key
        assert isinstance(key, LinearKey) == (switch == "current")
        k, k2 = key(x)[0], key(x2)[0]
        assert not torch.allclose(k[:, :, 4], k2[:, :, 4])
        assert torch.equal(k[:, :, :4], k2[:, :, :4])
        assert torch.allclose(k[:, :, 5:], k2[:, :, 5:]) != changes_later


def test_peek_off_makes_the_value_a_function_of_the_current_input():
    x = torch.randn(1, 10, D)
    x2 = x.clone()
    x2[:, 5] += 1.0  # perturb x_5: with a peek, v_4 reads it
    for switch, v4_changes in (("off", False), ("learned", True)):
        value = cmem(mosaic(value_peek=switch)).value
        v, v2 = value(x)[0], value(x2)[0]
        assert torch.allclose(v[:, :, 4], v2[:, :, 4]) != v4_changes
    assert torch.equal(cmem(mosaic(value_peek="off")).value.gamma, torch.ones(H))


@pytest.mark.parametrize(
    "switch, key, init",
    [
        (dict(key_extractor="leaky_fixed"), "blocks.0.cmem.key.theta", torch.linspace(0.5, 5.0, H) / 10),
        (dict(bandwidth="fixed"), "blocks.0.cmem.bandwidth.theta", torch.full((H,), 0.1)),
        (dict(value_peek="fixed"), "blocks.0.cmem.value.gamma", None),
    ],
)
def test_fixed_scalars_are_saved_but_not_trained(switch, key, init):
    model = mosaic(**switch).train()
    assert key in model.state_dict() and key not in dict(model.named_parameters())
    assert key in dict(mosaic().named_parameters())  # the reference trains it
    before = model.state_dict()[key].clone()
    if init is not None:
        torch.testing.assert_close(before, init)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    idx = torch.randint(0, V, (2, 16))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    optimizer.step()
    assert torch.equal(model.state_dict()[key], before)


def test_fixed_bandwidth_is_e_squared():
    beta = cmem(mosaic(bandwidth="fixed")).bandwidth(torch.arange(5))
    torch.testing.assert_close(beta, torch.full((H, 5), math.e**2))


@pytest.mark.parametrize("spec", ["learned", "fixed", 50.0])
def test_constant_bandwidth_per_head_equals_per_count(spec):
    """A bandwidth that ignores the count (n = None: one beta per head, broadcast over time) gives
    the betas it gives for any counts."""
    bandwidth = make_bandwidth(spec, H)
    assert not bandwidth.depends_on_count and make_bandwidth("adaptive", H).depends_on_count
    per_head = bandwidth(None)
    assert per_head.shape[-1] == 1
    torch.testing.assert_close(per_head.expand(-1, 7), bandwidth(torch.arange(7)))


def test_unnormalized_keys_keep_their_norm():
    x = torch.randn(2, 12, D)
    for normalize in (True, False):
        model = mosaic(normalize_keys=normalize)
        k, q, _ = cmem(model)._keys_and_queries(x, 0, None)
        norms = k.norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5) == normalize
        pmem = model.blocks[0].pmem
        kbar, _ = pmem.key(x, None)
        q, _ = pmem._queries(x, None)
        # q = beta kbar/||kbar|| (normalised) or beta kbar: the ratio q / kbar is constant per head only without it
        ratio = q / kbar
        assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), rtol=1e-4) != normalize


def block_weights(model):
    """Weights of the blocks' matrices (the per-head scalars left out)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() >= 2)


@pytest.mark.parametrize("persistent, cls", [("bank", PersistentMemory), ("mlp", GeluMLP), ("swiglu", SwiGLU)])
def test_persistent_alternatives_have_the_banks_weights(persistent, cls):
    model = mosaic(persistent=persistent)
    assert isinstance(model.blocks[0].pmem, cls)
    per_block = 3 * D * D + 9 * D * D  # C-mem W_phi, W_psi, W_o + 9 d^2 for the persistent part
    assert block_weights(model) == 2 * per_block


@pytest.mark.parametrize("n_head", [1, 2, 8])
def test_heads_at_equal_width_have_equal_matrices(n_head):
    assert block_weights(mosaic(n_head=n_head)) == block_weights(mosaic())


@pytest.mark.parametrize(
    "field, bad", [("key_extractor", "past"), ("value_peek", "on"), ("bandwidth", "wide"), ("persistent", "ffn")]
)
def test_unknown_switch_values_are_rejected(field, bad):
    with pytest.raises(ValueError, match=field):
        MosaicConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=8, **{field: bad})
