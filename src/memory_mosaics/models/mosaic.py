"""The GPT2-like Memory Mosaic language model (spec section 2.3).

    x = Embedding(tokens)                                   # no positional encoding
    repeat n_layer times (pre-norm):
        x = x + Dropout(c_proj(concat_h CMem_h(LN_1(x))))   # contextual memory
        x = x + Dropout(c_proj'(concat_h PMem_h(LN_2(x))))  # persistent memory
    logits = LN_f(x) @ Embedding^T / sqrt(d)                # tied weights

Linear and LayerNorm have no bias. Init: Linear N(0, 1/fan_in), c_proj N(0, 1/(fan_in n_layer)),
embedding N(0, 1). With ``pmem_size = 3.5 d`` a block has exactly 12 d^2 weights, as a bias-free
GPT-2 block, plus 7 scalars per head. v2 switches: ``key_extractor="gated"``,
``bandwidth="adaptive"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import ContextualMemory, GatedLeakyKey, LeakyAverageKey, PeekValue, PersistentMemory, make_bandwidth
from .base import LanguageModel, ModelConfig

KEY_EXTRACTORS = ("leaky", "gated")
BANDWIDTHS = ("learned", "adaptive")


@dataclass
class MosaicConfig(ModelConfig):
    """Hyper-parameters of :class:`MosaicLM` (defaults: the paper's 12-layer language model)."""

    model_type = "mosaic"

    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    pmem_size: int | None = None  # (key, value) pairs per head of each P-mem; None -> 3.5 * n_embd
    dropout: float = 0.05  # on each memory's output (residual dropout)
    attn_dropout: float = 0.05  # on retrieval weights
    key_extractor: str = "leaky"  # "leaky" (v1) | "gated" (v2)
    bandwidth: str = "learned"  # C-mem bandwidth: "learned" (v1) | "adaptive" (v2)

    def __post_init__(self):
        if self.pmem_size is None:
            self.pmem_size = int(round(3.5 * self.n_embd))
        self._check_positive("vocab_size", "n_layer", "n_head", "n_embd", "pmem_size")
        self._check_probability("dropout", "attn_dropout")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.key_extractor not in KEY_EXTRACTORS:
            raise ValueError(f"key_extractor must be one of {KEY_EXTRACTORS}, got {self.key_extractor!r}")
        if self.bandwidth not in BANDWIDTHS:
            raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {self.bandwidth!r}")


def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


def _key_extractor(config: MosaicConfig) -> nn.Module:
    proj = _linear(config.n_embd, config.n_embd)  # W_phi
    if config.key_extractor == "gated":
        return GatedLeakyKey(proj, config.n_embd, config.n_head)
    return LeakyAverageKey(proj, config.n_head)


class MosaicBlock(nn.Module):
    """One pre-norm block: contextual memory, then persistent memory, each in a residual branch."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        d, H = config.n_embd, config.n_head
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.cmem = ContextualMemory(
            key=_key_extractor(config),
            value=PeekValue(_linear(d, d), H),  # W_psi
            bandwidth=make_bandwidth(config.bandwidth, H),
            proj=_linear(d, d),
            attn_dropout=config.attn_dropout,
            resid_dropout=config.dropout,
        )
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.pmem = PersistentMemory(
            key=_key_extractor(config),
            bandwidth=make_bandwidth("learned", H),
            n_head=H,
            head_dim=d // H,
            size=config.pmem_size,
            proj=_linear(d, d),
            attn_dropout=config.attn_dropout,
            resid_dropout=config.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.cmem(self.ln_1(x))
        return x + self.pmem(self.ln_2(x))

    def prefill(self, x: Tensor) -> tuple[Tensor, list]:
        h, c_state = self.cmem.prefill(self.ln_1(x))
        x = x + h
        h, p_state = self.pmem.prefill(self.ln_2(x))
        return x + h, [c_state, p_state]

    def step(self, x: Tensor, state: list) -> Tensor:
        x = x + self.cmem.step(self.ln_1(x), state[0])
        h, state[1] = self.pmem.step(self.ln_2(x), state[1])
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
        """Reference initialisation: N(0, 1/fan_in) linears, N(0, 1/(fan_in n_layer)) c_proj, N(0, 1) embedding."""
        nn.init.normal_(self.wte.weight, std=1.0)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                fan_in = module.weight.shape[1]
                scale = self.config.n_layer if name.endswith("c_proj") else 1
                nn.init.normal_(module.weight, std=1.0 / math.sqrt(fan_in * scale))

    def _logits(self, x: Tensor) -> Tensor:
        # scale the (B, T, d) features rather than the (B, T, V) logits: one vocabulary-sized tensor, not two
        return (self.ln_f(x) / math.sqrt(self.config.n_embd)) @ self.wte.weight.T

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        self.check_tokens(idx)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        logits = self._logits(x)
        return logits if targets is None else (logits, self.loss(logits, targets))

    @torch.no_grad()
    def prefill(self, idx: Tensor) -> tuple[Tensor, list]:
        self.check_tokens(idx)
        x = self.wte(idx)
        states = []
        for block in self.blocks:
            x, state = block.prefill(x)
            states.append(state)
        return self._logits(x[:, -1]), states

    @torch.no_grad()
    def step(self, idx: Tensor, state: list) -> Tensor:
        self.check_tokens(idx)
        x = self.wte(idx)
        for block, block_state in zip(self.blocks, state):
            x = block.step(x, block_state)
        return self._logits(x[:, -1])
