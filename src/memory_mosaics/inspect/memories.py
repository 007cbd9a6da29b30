"""What one memory does on one input: its sparse retrieval and its per-head parameters.

Each function takes a memory module and the input ``h`` (1, T, d) it received in the model's own
forward pass (captured by :mod:`.language`), and recomputes the keys and queries with the module's
own code, never a copy of its formulas:

* :func:`contextual` (C-mem, spec eq. 2): weights ``softmax_s(beta_t k_t . k_s)`` over the pairs
  with ``min_lag <= t - s <= max_lag``; the pair stored at s holds the value of x_{s+1} (the peek), so
  the token it "retrieves" is ``ids[s + 1]`` (``token_offset = 1``).
* :func:`attention` (the GPT baseline): ``softmax_s(q_t . k_s / sqrt(Dh))`` over s <= t; the value
  at s is token s (``token_offset = 0``).
* :func:`persistent` (P-mem, spec 2.2): weights ``softmax_i(q_t . kappa_i)`` over the N slots.

Per-head parameters (H,) and per-token ones (H, T): bandwidth ``beta`` (spec 2.1, 5.1), leaky decay
``lambda`` (2.1) or v2's gate ``g_t`` and decay ``lambda_t`` (5.2), peek ``gamma`` (2.1), value and
P-mem scales ``alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import ContextualMemory, GatedLeakyKey, LeakyAverageKey, PersistentMemory
from ..layers.extractors import EXP_SCALE
from .sparse import SparseWeights, sparse_causal_weights, sparse_rows


@dataclass
class MemoryInspection:
    """One memory of one layer.

    name: "cmem", "short", "long" (v2), "attn" (GPT) or "pmem"; kind: "contextual", "attention" or
    "persistent"; retrieval: top-k sources (positions, or slots for a P-mem) and weights, (H, T, k);
    min_lag / max_lag: the readable lags (None for a P-mem); token_offset: pair s stores token
    s + token_offset; heads: per-head scalars name -> (H,); per_token: name -> (H, T).
    """

    name: str
    kind: str
    retrieval: SparseWeights
    min_lag: int | None = None
    max_lag: int | None = None
    token_offset: int = 1
    heads: dict[str, Tensor] = field(default_factory=dict)
    per_token: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n_head(self) -> int:
        return self.retrieval.sources.shape[0]

    def copy_score(self, ids: Tensor, predicted: Tensor) -> Tensor:
        """Per head (H,): fraction of queries whose most-weighted pair stores the token the model
        predicts next there (``ids[s + token_offset] == predicted[t]``): induction-like copying.
        ids, predicted (T,); NaN for a P-mem or a head that reads no pair."""
        if self.kind == "persistent":
            return torch.full((self.n_head,), float("nan"), device=ids.device)
        s = self.retrieval.sources[:, :, 0]  # (H, T)
        valid = s >= 0
        stored = ids[(s + self.token_offset).clamp(0, ids.shape[0] - 1)]
        hits = ((stored == predicted[None]) & valid).sum(-1).float()
        return hits / valid.sum(-1).clamp_min(1) + torch.where(valid.any(-1), 0.0, float("nan"))


def _key_parameters(key: nn.Module, h: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Leaky decay lambda_h (H,) (spec 2.1), or v2's gate g_t and decay lambda_t, (H, T) (spec 5.2)."""
    if isinstance(key, LeakyAverageKey):
        return {"decay": key.log_decay().exp().flatten()}, {}
    if isinstance(key, GatedLeakyKey):
        gate = key.gate(h)[0].exp().T  # g_t = exp(W_g x_t)
        decay = (-key.decay(h)[0].abs()).exp().T  # lambda_t = exp(-|W_lambda x_t|)
        return {"decay": decay.mean(-1), "gate": gate.mean(-1)}, {"decay": decay, "gate": gate}
    return {}, {}


@torch.no_grad()
def contextual(mem: ContextualMemory, h: Tensor, name: str, top_k: int, chunk: int = 256) -> MemoryInspection:
    """A contextual memory's retrieval on its input h (1, T, d_in)."""
    T = h.shape[1]
    t = torch.arange(T, device=h.device)
    k, q, _ = mem._keys_and_queries(h, 0, None)  # unit keys k_t, queries beta_t k_t: (1, H, T, Dh)
    retrieval = sparse_causal_weights(q[0], k[0], top_k, mem.min_lag, mem.max_lag, chunk)
    H = k.shape[1]
    beta = mem.bandwidth(mem.visible_pairs(t)).float().expand(H, T)  # (H, T)
    heads, per_token = _key_parameters(mem.key, h)
    heads["beta"] = beta[:, -1]
    if not torch.allclose(beta, beta[:, :1]):  # v2's adaptive bandwidth grows with the pairs read
        per_token["beta"] = beta
    gamma = mem.value.gamma
    heads["gamma"] = gamma.detach().float().reshape(-1).expand(H)
    if mem.value.theta is not None:
        heads["alpha"] = (EXP_SCALE * mem.value.theta).exp().float()
    return MemoryInspection(name, "contextual", retrieval, mem.min_lag, mem.max_lag, 1, heads, per_token)


@torch.no_grad()
def attention(attn: nn.Module, h: Tensor, name: str, top_k: int, chunk: int = 256) -> MemoryInspection:
    """A GPT attention layer's weights on its input h (1, T, d): causal, the query reads itself too."""
    q, k, _ = attn._qkv(h)  # (1, H, T, Dh)
    scale = 1.0 / math.sqrt(q.shape[-1])  # scaled_dot_product_attention's default
    retrieval = sparse_causal_weights(q[0] * scale, k[0], top_k, 0, None, chunk)
    heads = {"beta": torch.full((q.shape[1],), scale, device=q.device)}
    return MemoryInspection(name, "attention", retrieval, 0, None, 0, heads, {})


@torch.no_grad()
def persistent(pmem: PersistentMemory, h: Tensor, name: str, top_k: int) -> MemoryInspection:
    """A persistent memory's slot weights on its input h (1, T, d) (spec 2.2)."""
    w = pmem.retrieval_weights(h)[0]  # (H, T, N)
    slots, weights, entropy = sparse_rows(w, top_k)
    H, T, N = w.shape
    retrieval = SparseWeights(slots, weights, entropy, w.new_zeros(H, T), torch.full((T,), N, device=w.device))
    heads, per_token = _key_parameters(pmem.key, h)
    heads["beta"] = pmem.bandwidth(torch.ones(1, device=h.device)).float().reshape(-1).expand(H)
    heads["alpha"] = (EXP_SCALE * pmem.theta).exp().float()
    return MemoryInspection(name, "persistent", retrieval, None, None, 0, heads, per_token)
