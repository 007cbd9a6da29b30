"""Model-level properties: causality, decoding == full forward, persistence, input checks."""

import json

import pytest
import torch
from helpers import v2_switches

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM, load_pretrained

V = 97


def mosaic(**kw):
    cfg = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, dropout=0.0, attn_dropout=0.0)
    return MosaicLM(MosaicConfig(**{**cfg, **kw})).eval()


def gpt(**kw):
    cfg = dict(vocab_size=V, block_size=512, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return GPTLM(GPTConfig(**{**cfg, **kw})).eval()


MODELS = {
    "mosaic": mosaic,
    "mosaic-v2": lambda: mosaic(key_extractor="gated", bandwidth="adaptive"),
    "mosaic-v2-memories": lambda: mosaic(**v2_switches(window=8, skip_min=4, skip_max=12)),
    "gpt": gpt,
}


@pytest.mark.parametrize("name", MODELS)
def test_no_future_leakage(name):
    model = MODELS[name]()
    idx = torch.randint(0, V, (2, 24))
    logits = model(idx)
    for t in range(23):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, V, (2, 23 - t))
        torch.testing.assert_close(model(changed)[:, : t + 1], logits[:, : t + 1])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("prompt_len", [1, 300])
def test_incremental_decoding_matches_full_forward(name, prompt_len):
    model = MODELS[name]()
    seq = torch.randint(0, V, (3, prompt_len + 40))
    full = model(seq)
    logits, state = model.prefill(seq[:, :prompt_len])
    torch.testing.assert_close(logits, full[:, prompt_len - 1], atol=1e-5, rtol=0)
    for t in range(prompt_len, seq.shape[1]):
        logits = model.step(seq[:, t : t + 1], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_generate_greedy_equals_argmax_of_full_forward(name):
    model = MODELS[name]()
    prompt = torch.randint(0, V, (2, 5))
    out = model.generate(prompt, 12, temperature=0)
    assert out.shape == (2, 17) and torch.equal(out[:, :5], prompt)
    full = model(out[:, :-1])
    assert torch.equal(full[:, 4:].argmax(-1), out[:, 5:])


def test_generate_stops_at_eos_and_pads_finished_rows():
    model = mosaic()
    prompt = torch.randint(0, V, (2, 4))
    greedy = model.generate(prompt, 6, temperature=0)
    eos = int(greedy[0, 5])  # row 0 emits it at its second new token
    out = model.generate(prompt, 6, temperature=0, eos_token=eos)
    assert (out[0, 5:] == eos).all()
    first = (greedy[1, 4:] == eos).nonzero()
    if len(first):
        assert (out[1, 4 + first[0, 0] :] == eos).all()


def test_sampling_is_reproducible_with_a_generator():
    model = mosaic()
    prompt = torch.randint(0, V, (2, 4))
    a = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 8, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(tmp_path, name):
    model = MODELS[name]()
    idx = torch.randint(0, V, (2, 16))
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert torch.equal(loaded(idx), model(idx))
    assert torch.equal(load_pretrained(tmp_path).eval()(idx), model(idx))
    # tied weights stay tied after loading
    assert loaded.wte.weight.data_ptr() == loaded.wte.weight.data_ptr()


def test_configs_round_trip_through_json():
    for cfg in (MosaicConfig(n_layer=3, key_extractor="gated"), GPTConfig(block_size=64)):
        assert type(cfg).from_json(cfg.to_json()) == cfg
    assert json.loads(MosaicConfig().to_json())["pmem_size"] == 2688


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(dropout=1.5), "dropout"),
        (dict(key_extractor="conv"), "key_extractor"),
    ],
)
def test_inconsistent_configs_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        MosaicConfig(**kw)


def test_config_from_wrong_model_or_unknown_field():
    with pytest.raises(ValueError, match="model_type"):
        MosaicConfig.from_json(GPTConfig().to_json())
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"n_layer": 2, "colour": "red"})


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([[1, 2, V]]), "outside"),
        (torch.tensor([[-1, 2]]), "outside"),
        (torch.zeros(1, 0, dtype=torch.long), "non-empty"),
        (torch.zeros(2, 3), "integer"),
        (torch.zeros(2, 3, 4, dtype=torch.long), "shape"),
        ([[1, 2]], "Tensor"),
    ],
)
def test_bad_token_inputs_raise_value_error(name, bad, match):
    with pytest.raises(ValueError, match=match):
        MODELS[name]()(bad)


def test_gpt_refuses_past_block_size_mosaic_has_no_limit():
    g = gpt(block_size=16)
    with pytest.raises(ValueError, match="block_size"):
        g(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        g.generate(torch.zeros(1, 10, dtype=torch.long), 10)
    assert mosaic()(torch.zeros(1, 5000, dtype=torch.long)).isfinite().all()


def test_mosaic_trained_at_one_length_runs_at_four_times_it():
    """Train a 1-layer Mosaic on 'copy the previous block' at T=32; at T=128 it still copies."""
    torch.manual_seed(0)
    model = MosaicLM(MosaicConfig(vocab_size=32, n_layer=1, n_head=4, n_embd=64, dropout=0.0, attn_dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def batch(T, period=8):
        block = torch.randint(0, 32, (16, period))
        return block.repeat(1, T // period)

    model.train()
    for _ in range(150):
        seq = batch(33 + 7)[:, :33]
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        seq = batch(136)[:, :129]
        logits = model(seq[:, :-1])
        # accuracy on the positions after the first block: the answer is in the memory
        acc_long = (logits[:, 8:].argmax(-1) == seq[:, 9:]).float().mean()
    assert acc_long > 0.9, f"copy accuracy at 4x the training length: {acc_long:.3f}"


def test_v2_long_term_skip_is_drawn_in_training_and_fixed_in_eval():
    model = MODELS["mosaic-v2-memories"]()
    long = model.blocks[0].cmem.long
    seen, forward = [], long.forward
    long.forward = lambda x, min_lag=None: (seen.append(min_lag), forward(x, min_lag))[1]
    idx = torch.randint(0, V, (1, 40))
    torch.testing.assert_close(model(idx), model(idx))  # eval: m = long_term_skip_min
    assert seen == [4, 4]
    model.train()
    seen.clear()
    for _ in range(30):
        model(idx)
    assert len(set(seen)) > 1 and min(seen) >= 4 and max(seen) <= 12
    assert long.min_lag == 4  # drawn per call, never stored: decoding still uses m_lo


def test_diagnostics_report_the_reference_scalars_at_init():
    import math

    model = mosaic()
    d = model.diagnostics(torch.randint(0, V, (2, 40)))
    lam = torch.exp(-torch.linspace(0.5, 5.0, 4)).mean().item()
    for i in range(2):
        assert d[f"layer{i}/cmem_beta"] == pytest.approx(math.exp(2)) == d[f"layer{i}/pmem_beta"]
        assert d[f"layer{i}/cmem_lambda"] == pytest.approx(lam) == d[f"layer{i}/pmem_lambda"]
        assert 0 < d[f"layer{i}/cmem_entropy"] < 1 and 0 < d[f"layer{i}/pmem_entropy"] < 1
    w = model.blocks[0].pmem.retrieval_weights(torch.randn(2, 5, 32))
    assert w.shape == (2, 4, 5, model.config.pmem_size)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 5))
    assert gpt().diagnostics(torch.zeros(1, 4, dtype=torch.long)) == {}
