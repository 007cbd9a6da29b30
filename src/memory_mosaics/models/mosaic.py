"""The GPT2-like Memory Mosaic language model (spec section 2.3).

    x = Embedding(tokens)                                   # no positional encoding
    repeat n_layer times (pre-norm):
        x = x + Dropout(c_proj(concat_h CMem_h(LN_1(x))))   # contextual memory
        x = x + Dropout(c_proj'(concat_h PMem_h(LN_2(x))))  # persistent memory
    logits = LN_f(x) @ Embedding^T / sqrt(d)                # tied weights

Linear and LayerNorm have no bias. Reference initialisation (the authors' ``StackAssoMem``): Linear
N(0, 1/fan_in), c_proj N(0, 1/(fan_in n_layer)), and the tied embedding / output matrix N(0, 1/d):
the reference ties ``emb.weight = head.weight`` before ``apply(_init_weights)``, which draws the
shared tensor first as an Embedding (N(0, 1)) and then again as the head Linear (fan_in = d). A
fresh model's loss on random tokens is therefore ln V. ``embedding_init="unit"`` keeps the N(0, 1)
draw (a naive reading of ``_init_weights``; an option, not the reference). With
``pmem_size = 3.5 d`` a block has exactly 12 d^2 weights, as a bias-free GPT-2 block, plus 7
scalars per head.

Dropout: ``dropout`` on each memory's output (residual), ``attn_dropout`` on the contextual
memory's retrieval weights and ``pmem_attn_dropout`` (default: ``attn_dropout``) on the persistent
memory's. The authors' language runs use the "eft" model, whose contextual memory applies no
retrieval dropout while its P-mem does: ``attn_dropout=0, pmem_attn_dropout=0.05``.

v2 switches (spec section 5): ``key_extractor="gated"``, ``bandwidth="adaptive"``,
``short_term_window=h`` (a short-term memory over lags 1..h-1 and a long-term memory over lags
>= m, m ~ U[long_term_skip_min, long_term_skip_max] in training, their outputs concatenated then
W_o) and ``persistent="swiglu"`` (a SwiGLU feed-forward of hidden size 3 d, 9 d^2 weights like the
bank P-mem).

Ablation switches (docs/ablations.md), each replacing one ingredient of the reference (first value):

- ``key_extractor``: "leaky" (learned decay) | "leaky_fixed" (decays kept at their initial values)
  | "current" (k_t = W_phi x_t, no leaky average) | "gated" (v2). Applies to both memories' keys.
- ``value_peek``: "learned" (gamma per head) | "fixed" (gamma kept at its U(0, 1) initial value)
  | "off" (gamma = 1: v_t = W_psi x_t, no peek).
- ``bandwidth`` (contextual memory): "learned" | "fixed" (kept at its initial beta = e^2) | "adaptive" (v2).
- ``persistent``: "bank" (the P-mem) | "mlp" (GELU MLP, hidden 4.5 d) | "swiglu" (v2, hidden 3 d),
  9 d^2 weights each.
- ``normalize_keys``: True | False (contextual keys and persistent queries not unit-normalised).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..common import ResidualProjection
from ..layers import (
    ContextualMemory,
    GatedLeakyKey,
    GeluMLP,
    LeakyAverageKey,
    LinearKey,
    PeekValue,
    PersistentMemory,
    ShortLongMemory,
    SwiGLU,
    make_bandwidth,
)
from .base import LanguageModel, ModelConfig

KEY_EXTRACTORS = ("leaky", "leaky_fixed", "current", "gated")
VALUE_PEEKS = ("learned", "fixed", "off")
BANDWIDTHS = ("learned", "fixed", "adaptive")
PERSISTENT = ("bank", "mlp", "swiglu")
EMBEDDING_INITS = ("reference", "unit")


@dataclass
class MosaicConfig(ModelConfig):
    """Hyper-parameters of :class:`MosaicLM` (defaults: the paper's 12-layer language model)."""

    model_type = "mosaic"

    pmem_size: int | None = None  # (key, value) pairs per head of each P-mem; None -> 3.5 * n_embd
    attn_dropout: float = 0.05  # on the contextual memory's retrieval weights
    pmem_attn_dropout: float | None = None  # on the persistent memory's retrieval weights; None -> attn_dropout
    embedding_init: str = "reference"  # "reference": tied matrix N(0, 1/d) as the authors' | "unit": N(0, 1)
    key_extractor: str = "leaky"  # "leaky" (v1) | "gated" (v2) | ablations "leaky_fixed", "current"
    value_peek: str = "learned"  # "learned" (v1) | ablations "fixed", "off"
    bandwidth: str = "learned"  # C-mem bandwidth: "learned" (v1) | "adaptive" (v2) | ablation "fixed"
    normalize_keys: bool = True  # False: ablation, keys (and P-mem queries) not unit-normalised
    short_term_window: int | None = None  # v2: h; None = one contextual memory over all past pairs (v1)
    long_term_skip_min: int = 64  # v2: m at inference, lower end of m's training range
    long_term_skip_max: int = 256  # v2: upper end of m's training range
    persistent: str = "bank"  # "bank" (v1 P-mem) | "swiglu" (v2) | ablation "mlp"

    @classmethod
    def training_fields(cls, train) -> dict:
        """``train.dropout`` where the authors' language runs put it: their "eft" model has residual
        and P-mem retrieval dropout, and none on the contextual memory's retrieval weights."""
        return {"attn_dropout": 0.0, "pmem_attn_dropout": train.dropout}

    def __post_init__(self):
        if self.pmem_size is None:
            self.pmem_size = int(round(3.5 * self.n_embd))
        self._check_positive("vocab_size", "n_layer", "n_head", "n_embd", "pmem_size")
        if self.pmem_attn_dropout is None:
            self.pmem_attn_dropout = self.attn_dropout
        self._check_probability("dropout", "attn_dropout", "pmem_attn_dropout")
        self._check_heads()
        for name, choices in (
            ("embedding_init", EMBEDDING_INITS),
            ("key_extractor", KEY_EXTRACTORS),
            ("value_peek", VALUE_PEEKS),
            ("bandwidth", BANDWIDTHS),
            ("persistent", PERSISTENT),
        ):
            self._check_choice(name, choices)
        if self.short_term_window is not None:
            self._check_positive("short_term_window", "long_term_skip_min", "long_term_skip_max")
            if self.short_term_window < 2 or self.long_term_skip_min > self.long_term_skip_max:
                raise ValueError("v2 memories need short_term_window >= 2 and long_term_skip_min <= long_term_skip_max")


def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


def _key_extractor(config: MosaicConfig) -> nn.Module:
    proj = _linear(config.n_embd, config.n_embd)  # W_phi
    if config.key_extractor == "gated":
        return GatedLeakyKey(proj, config.n_embd, config.n_head)
    if config.key_extractor == "current":
        return LinearKey(proj, config.n_head)
    return LeakyAverageKey(proj, config.n_head, learn=config.key_extractor == "leaky")


def _value_extractor(config: MosaicConfig) -> PeekValue:
    proj = _linear(config.n_embd, config.n_embd)  # W_psi
    if config.value_peek == "off":
        return PeekValue(proj, config.n_head, gamma=1.0)
    return PeekValue(proj, config.n_head, learn=config.value_peek == "learned")


def _contextual_memory(config: MosaicConfig, proj: nn.Module, **lags) -> ContextualMemory:
    H = config.n_head
    return ContextualMemory(
        key=_key_extractor(config),
        value=_value_extractor(config),
        bandwidth=make_bandwidth(config.bandwidth, H),
        proj=proj,
        normalize_keys=config.normalize_keys,
        attn_dropout=config.attn_dropout,
        resid_dropout=config.dropout if not isinstance(proj, nn.Identity) else 0.0,
        **lags,
    )


def _contextual_part(config: MosaicConfig) -> nn.Module:
    d = config.n_embd
    if config.short_term_window is None:
        return _contextual_memory(config, ResidualProjection(d, d))
    short = _contextual_memory(config, nn.Identity(), max_lag=config.short_term_window - 1)
    long = _contextual_memory(config, nn.Identity(), min_lag=config.long_term_skip_min)
    skip = (config.long_term_skip_min, config.long_term_skip_max)
    return ShortLongMemory(short, long, ResidualProjection(2 * d, d), skip, resid_dropout=config.dropout)


def _persistent_part(config: MosaicConfig) -> nn.Module:
    d, H = config.n_embd, config.n_head
    if config.persistent == "swiglu":
        return SwiGLU(d, 3 * d, ResidualProjection(3 * d, d), resid_dropout=config.dropout)
    if config.persistent == "mlp":
        hidden = 9 * d // 2
        return GeluMLP(d, hidden, ResidualProjection(hidden, d), resid_dropout=config.dropout)
    return PersistentMemory(
        key=_key_extractor(config),
        bandwidth=make_bandwidth("learned", H),
        n_head=H,
        head_dim=d // H,
        size=config.pmem_size,
        proj=ResidualProjection(d, d),
        attn_dropout=config.pmem_attn_dropout,
        resid_dropout=config.dropout,
        normalize=config.normalize_keys,
    )


def _entropy(w: Tensor) -> Tensor:
    """Entropy (nats) of distributions along the last axis."""
    return -(w * w.clamp_min(1e-30).log()).sum(-1)


@dataclass
class BlockState:
    """Decoding state of one :class:`MosaicBlock`: its contextual memory's (a ``ContextualState``,
    or a ``ShortLongState`` with v2 memories) and its persistent memory's key-extractor state."""

    cmem: Any
    pmem: Any


class MosaicBlock(nn.Module):
    """One pre-norm block: contextual memory, then persistent memory, each in a residual branch."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=False)
        self.cmem = _contextual_part(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=False)
        self.pmem = _persistent_part(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.cmem(self.ln_1(x))
        return x + self.pmem(self.ln_2(x))

    def prefill(self, x: Tensor) -> tuple[Tensor, BlockState]:
        h, c_state = self.cmem.prefill(self.ln_1(x))
        x = x + h
        h, p_state = self.pmem.prefill(self.ln_2(x))
        return x + h, BlockState(c_state, p_state)

    def step(self, x: Tensor, state: BlockState) -> Tensor:
        x = x + self.cmem.step(self.ln_1(x), state.cmem)
        h, state.pmem = self.pmem.step(self.ln_2(x), state.pmem)
        return x + h


class MosaicLM(LanguageModel):
    """Memory Mosaic language model. ``model(idx)`` -> logits (B, T, V); with targets, (logits, loss)."""

    config_class = MosaicConfig

    def __init__(self, config: MosaicConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(MosaicBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Reference initialisation (module docstring): N(0, 1/fan_in) linears, N(0, 1/(fan_in n_layer))
        c_proj, tied embedding N(0, 1/d) (N(0, 1) with ``embedding_init="unit"``). The per-head
        scalars and P-mem banks keep the values their layers are constructed with."""
        unit = self.config.embedding_init == "unit"
        nn.init.normal_(self.wte.weight, std=1.0 if unit else 1.0 / math.sqrt(self.config.n_embd))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                scale = self.config.n_layer if isinstance(module, ResidualProjection) else 1
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in * scale))

    @torch.no_grad()
    def diagnostics(self, idx: Tensor) -> dict[str, float]:
        """Per layer, means over heads: the C-mem and P-mem bandwidths beta (C-mem at the last
        position), the leaky-average decays lambda, the value peek gamma, and the normalised
        entropies of the retrieval weights on ``idx`` (1 = uniform over the readable pairs, 0 = one
        pair): the C-mem's at the last position, the P-mem's over all positions."""
        out: dict[str, float] = {}
        x = self._embed(idx)
        T = idx.shape[1]
        for i, block in enumerate(self.blocks):
            h, cmem, pmem = block.ln_1(x), block.cmem, block.pmem
            if isinstance(cmem, ContextualMemory):
                out[f"layer{i}/cmem_beta"] = cmem.bandwidth(torch.tensor([T - 1]))[:, -1].mean().item()
                if isinstance(cmem.key, LeakyAverageKey):
                    out[f"layer{i}/cmem_lambda"] = cmem.key.log_decay().exp().mean().item()
                if isinstance(cmem.value.gamma, nn.Parameter):
                    out[f"layer{i}/cmem_gamma"] = cmem.value.gamma.mean().item()
                w = cmem.attention(h)[:, :, -1, : T - 1].float()  # (B, H, T-1): the last query's weights
                out[f"layer{i}/cmem_entropy"] = (_entropy(w) / math.log(T - 1)).mean().item()
            x = x + cmem(h)
            h = block.ln_2(x)
            if isinstance(pmem, PersistentMemory):
                out[f"layer{i}/pmem_beta"] = pmem.bandwidth(torch.tensor([1])).mean().item()
                if isinstance(pmem.key, LeakyAverageKey):
                    out[f"layer{i}/pmem_lambda"] = pmem.key.log_decay().exp().mean().item()
                w = pmem.retrieval_weights(h).float()
                out[f"layer{i}/pmem_entropy"] = (_entropy(w) / math.log(w.shape[-1])).mean().item()
            x = x + pmem(h)
        return out

    def _logits(self, x: Tensor) -> Tensor:
        # scale the (B, T, d) features rather than the (B, T, V) logits: one vocabulary-sized tensor, not two
        return (self.ln_f(x) / math.sqrt(self.config.n_embd)) @ self.wte.weight.T

    def _embed(self, idx: Tensor) -> Tensor:
        return self.wte(idx)  # no positional encoding

    @torch.no_grad()
    def prefill(self, idx: Tensor) -> tuple[Tensor, list[BlockState]]:
        self.check_tokens(idx)
        x = self._embed(idx)
        states = []
        for block in self.blocks:
            x, state = block.prefill(x)
            states.append(state)
        return self._logits(x[:, -1]), states

    @torch.no_grad()
    def step(self, idx: Tensor, state: list[BlockState]) -> Tensor:
        self.check_tokens(idx)
        x = self._embed(idx)
        for block, block_state in zip(self.blocks, state):
            x = block.step(x, block_state)
        return self._logits(x[:, -1])
