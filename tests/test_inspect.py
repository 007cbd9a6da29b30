"""memory_mosaics.inspect: the inspected weights are the model's own (they reproduce its forward
pass), the sparse top-k equals the dense reference, v2 windows hold, the logit lens ends at the
model's logits, and the copy score counts what it says."""

import pytest
import torch
import torch.nn.functional as F
from helpers import v2_switches

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.common import merge_heads
from memory_mosaics.inspect import MemoryInspection, SparseWeights, inspect
from memory_mosaics.inspect import memories as inspect_memories
from memory_mosaics.inspect.sparse import sparse_causal_weights, to_dense
from memory_mosaics.layers import ContextualMemory, PersistentMemory
from memory_mosaics.layers.extractors import EXP_SCALE
from memory_mosaics.layers.multilevel import ShortLongMemory
from memory_mosaics.models.gpt import GPTLM, CausalSelfAttention, GPTConfig
from memory_mosaics.models.moons import moons_memory
from memory_mosaics.ops.retrieval import causal_retrieval_weights

V, T = 50, 23


def dense_reference(q, k, min_lag, max_lag):
    """(H, T, T) weights: the ops' literal reference for memories, masked softmax for attention."""
    if min_lag >= 1:
        return causal_retrieval_weights(q[None], k[None], min_lag, max_lag)[0]
    scores = (q @ k.transpose(-1, -2)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("min_lag, max_lag", [(1, None), (1, 4), (5, None), (0, None)])
@pytest.mark.parametrize("chunk", [7, 256])
def test_sparse_weights_equal_the_dense_reference(min_lag, max_lag, chunk):
    q, k = torch.randn(3, T, 4) * 2, torch.randn(3, T, 4)
    dense = dense_reference(q, k, min_lag, max_lag)
    full = sparse_causal_weights(q, k, T, min_lag, max_lag, chunk)
    torch.testing.assert_close(to_dense(full), dense)
    entropy = -(dense * dense.clamp_min(1e-30).log()).sum(-1)
    lag = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).float()
    torch.testing.assert_close(full.entropy, entropy)
    torch.testing.assert_close(full.distance, (dense * lag).sum(-1))
    readable = (lag >= min_lag) & (lag <= (max_lag if max_lag is not None else T))
    assert full.readable.tolist() == readable.sum(-1).tolist()
    # top-k: the k largest weights of each row, largest first; -1 exactly where fewer pairs are readable
    top = sparse_causal_weights(q, k, 5, min_lag, max_lag, chunk)
    assert (top.weights[..., :-1] >= top.weights[..., 1:]).all()
    n_valid = (top.sources >= 0).sum(-1)
    assert n_valid.tolist() == readable.sum(-1).clamp(max=5).expand(3, T).tolist()
    torch.testing.assert_close(top.weights, dense.topk(5, dim=-1).values * (top.sources >= 0))
    picked = dense.gather(-1, top.sources.clamp_min(0)) * (top.sources >= 0)
    torch.testing.assert_close(picked, top.weights)


def capture_branches(model, idx):
    """Run the model's own forward; return {module: (input, output)} of every memory branch."""
    seen, handles = {}, []
    kinds = (ContextualMemory, ShortLongMemory, CausalSelfAttention, PersistentMemory)
    for block in model.blocks:
        for module in block.children():
            if isinstance(module, kinds):
                handles.append(module.register_forward_hook(lambda m, i, o: seen.__setitem__(m, (i[0], o))))
    logits = model(idx[None])
    for h in handles:
        h.remove()
    return seen, logits[0]


def readout(mem: MemoryInspection, v):
    """sum_s w[t, s] v_s with the inspected weights: (H, T, T) @ (1, H, T, D) -> (1, H, T, D)."""
    return to_dense(mem.retrieval)[None] @ v


def recompute(module, h, found):
    """A branch's output rebuilt from the inspected weights (and the module's own values / slots)."""
    if isinstance(module, ContextualMemory):
        return module.c_proj(merge_heads(readout(found[0], module.value(h)[0])))
    if isinstance(module, ShortLongMemory):
        ys = [merge_heads(readout(m, mem.value(h)[0])) for m, mem in zip(found, (module.short, module.long))]
        return module.c_proj(torch.cat(ys, dim=-1))
    if isinstance(module, CausalSelfAttention):
        return module.c_proj(merge_heads(readout(found[0], module._qkv(h)[2])))
    alpha = (EXP_SCALE * module.theta).exp().view(1, -1, 1, 1)
    w = torch.zeros(*found[0].retrieval.sources.shape[:2], module.kappa.shape[2])
    w.scatter_(-1, found[0].retrieval.sources, found[0].retrieval.weights)
    return module.c_proj(merge_heads(alpha * (w[None] @ module.u)))


def branch_name(block, module):
    return next(n for n, m in block.named_children() if m is module)


MODELS = {
    "mosaic-v1": lambda: MosaicLM(MosaicConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, pmem_size=12)),
    "mosaic-v2": lambda: MosaicLM(
        MosaicConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, **v2_switches(window=4, skip_min=6, skip_max=9))
    ),
    "mosaic-v2-bank": lambda: MosaicLM(
        MosaicConfig(vocab_size=V, n_layer=1, n_head=4, n_embd=16, short_term_window=3, long_term_skip_min=2)
    ),
    "gpt": lambda: GPTLM(GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, block_size=32)),
}


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_inspected_weights_reproduce_the_forward_pass(name):
    model = MODELS[name]().eval()
    idx = torch.randint(0, V, (T,))
    seen, logits = capture_branches(model, idx)
    ins = inspect(model, idx, top_k=64)  # >= T and >= P-mem slots: the sparse weights are the whole rows
    assert len(ins.layers) == len(model.blocks)
    checked = 0
    for block, layer in zip(model.blocks, ins.layers):
        found = iter(layer.memories)
        for module in block.children():
            if module not in seen:
                continue
            h, out = seen[module]
            n = 2 if isinstance(module, ShortLongMemory) else 1
            mems = [next(found) for _ in range(n)]
            torch.testing.assert_close(recompute(module, h, mems), out, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(layer.norms[branch_name(block, module)], out[0].norm(dim=-1))
            checked += 1
    assert checked >= len(model.blocks)
    # the logit lens after the last block is the model's own distribution; loss = -log p(next)
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(ins.top_probs, logp.exp().topk(5, dim=-1).values)
    assert ins.top_ids[:, 0].tolist() == logits.argmax(-1).tolist() == ins.predicted.tolist()
    torch.testing.assert_close(ins.loss, F.cross_entropy(logits[:-1], idx[1:], reduction="none"))


@torch.no_grad()
def test_the_three_moons_memory_is_inspected_exactly():
    mem = moons_memory(3).eval()
    x = torch.randn(1, 40, 6)
    found = inspect_memories.contextual(mem, x, "3heads", top_k=40)
    torch.testing.assert_close(recompute(mem, x, [found]), mem(x), rtol=1e-4, atol=1e-5)
    assert found.heads["beta"].tolist() == [50.0] * 3 and found.heads["gamma"].tolist() == [0.0] * 3
    assert (found.retrieval.sources[:, 1:, 0] < torch.arange(1, 40)).all()  # strictly causal


def lags(mem: MemoryInspection) -> torch.Tensor:
    src = mem.retrieval.sources
    return (torch.arange(src.shape[1])[None, :, None] - src)[src >= 0]


@torch.no_grad()
def test_v2_windows_and_parameters():
    model = MODELS["mosaic-v2"]().eval()
    ins = inspect(model, torch.randint(0, V, (T,)), top_k=3)
    short, long = ins.layers[0].memories  # SwiGLU: no retrieval in the persistent branch
    assert (short.name, long.name) == ("short", "long")
    assert lags(short).min() >= 1 and lags(short).max() <= 3  # lags 1 .. h - 1
    assert lags(long).min() >= 6  # lags >= m at inference
    assert (long.retrieval.sources[:, :6] == -1).all()  # nothing readable before m steps
    assert set(ins.layers[0].norms) == {"cmem", "pmem", "stream"}
    for mem in (short, long):
        assert mem.per_token["gate"].shape == mem.per_token["decay"].shape == (2, T)
        assert (mem.per_token["decay"] > 0).all() and (mem.per_token["decay"] <= 1).all()
        beta = mem.per_token["beta"]  # adaptive: grows with the number of readable pairs
        assert (beta[:, 1:] >= beta[:, :-1]).all() and (beta[:, -1] > beta[:, 0]).all()


@torch.no_grad()
def test_gpt_attention_reads_its_own_position_and_model_mode_is_restored():
    model = MODELS["gpt"]().train()
    ins = inspect(model, torch.randint(0, V, (T,)), top_k=T)
    assert model.training
    attn = ins.layers[0].memories[0]
    assert attn.kind == "attention" and attn.token_offset == 0
    assert lags(attn).min() == 0 and (attn.retrieval.readable == torch.arange(1, T + 1)).all()
    with pytest.raises(ValueError, match="block_size"):
        inspect(model, torch.randint(0, V, (40,)))
    with pytest.raises(ValueError, match="one sequence"):
        inspect(model, torch.randint(0, V, (2, 5)))


def test_copy_score_counts_top_sources_that_store_the_prediction():
    # ids: a b c a b ; the query at t = 3 ("a") reading pair s = 0, which stores ids[1] = "b", predicts "b"
    ids = torch.tensor([0, 1, 2, 0, 1])
    predicted = torch.tensor([2, 2, 2, 1, 1])
    sources = torch.tensor([[[-1], [0], [1], [0], [0]], [[-1], [0], [0], [2], [1]]])  # (H=2, T=5, k=1)
    weights = (sources >= 0).float()
    r = SparseWeights(sources, weights, torch.zeros(2, 5), torch.zeros(2, 5), torch.arange(5))
    mem = MemoryInspection("cmem", "contextual", r, token_offset=1)
    # head 0: t=1 stores ids[1]=1 vs 2 no; t=2 stores ids[2]=2 yes; t=3 stores 1 yes; t=4 stores 1 yes -> 3/4
    # head 1: t=1 no; t=2 stores ids[1]=1 vs 2 no; t=3 stores ids[3]=0 vs 1 no; t=4 stores ids[2]=2 vs 1 no -> 0
    assert mem.copy_score(ids, predicted).tolist() == [0.75, 0.0]
    # attention: the value at s is token s; only head 1 at t=4 (s=1, ids[1]=1 == 1) -> [0, 1/4]
    attention = MemoryInspection("attn", "attention", r, token_offset=0)
    assert attention.copy_score(ids, predicted).tolist() == [0.0, 0.25]
    assert MemoryInspection("pmem", "persistent", r).copy_score(ids, predicted).isnan().all()


@torch.no_grad()
def test_chunked_computation_changes_nothing():
    model = MODELS["mosaic-v1"]().eval()
    idx = torch.randint(0, V, (T,))
    one, chunked = inspect(model, idx, top_k=6, chunk=256), inspect(model, idx, top_k=6, chunk=5)
    torch.testing.assert_close(chunked.loss, one.loss)
    for a, b in zip(one.layers, chunked.layers):
        assert torch.equal(a.lens_ids, b.lens_ids)
        torch.testing.assert_close(b.lens_probs, a.lens_probs)
        for ma, mb in zip(a.memories, b.memories):
            assert torch.equal(ma.retrieval.sources, mb.retrieval.sources)
            torch.testing.assert_close(mb.retrieval.weights, ma.retrieval.weights)
