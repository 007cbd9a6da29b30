"""GPT-2 baseline (learned positions, GELU MLP 4d, tied embeddings), with a KV cache for decoding.

Init as GPT-2: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)). ``bias=False`` by
default so that a block has exactly 12 d^2 weights (the Mosaic block's budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..common import GrowingBuffer, ResidualProjection, merge_heads, split_heads
from .base import LanguageModel, ModelConfig


@dataclass
class KVCache:
    """One attention layer's stored keys and values, each (B, H, t, Dh)."""

    keys: GrowingBuffer
    values: GrowingBuffer


@dataclass
class GPTState:
    """Decoding state of :class:`GPTLM`: one :class:`KVCache` per block and the number of positions seen."""

    caches: list[KVCache]
    t: int


@dataclass
class GPTConfig(ModelConfig):
    """Hyper-parameters of :class:`GPTLM` (defaults: GPT-2 small with a 512-token context)."""

    model_type = "gpt"

    block_size: int = 512
    bias: bool = False

    @classmethod
    def training_fields(cls, train) -> dict:
        """The position table covers the training context; ``dropout`` on attention and residuals (nanoGPT)."""
        return {"block_size": train.context}

    def __post_init__(self):
        self._check_positive("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        self._check_probability("dropout")
        self._check_heads()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = ResidualProjection(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def _attend(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self._qkv(x)
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True), k, v

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d) -> (B, T, d)."""
        return self.resid_dropout(self.c_proj(merge_heads(self._attend(x)[0])))

    def prefill(self, x: Tensor) -> tuple[Tensor, KVCache]:
        """The output over a prompt x (B, T, d) and its keys and values."""
        y, k, v = self._attend(x)
        return self.resid_dropout(self.c_proj(merge_heads(y))), KVCache(GrowingBuffer(k), GrowingBuffer(v))

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One position x (B, 1, d) attending to the cache and itself."""
        q, k, v = self._qkv(x)
        cache.keys.append(k)
        cache.values.append(v)
        y = F.scaled_dot_product_attention(q, cache.keys.view(), cache.values.view())
        return self.c_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = ResidualProjection(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def prefill(self, x: Tensor) -> tuple[Tensor, KVCache]:
        h, cache = self.attn.prefill(self.ln_1(x))
        x = x + h
        return x + self.mlp(self.ln_2(x)), cache

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        x = x + self.attn.step(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPTLM(LanguageModel):
    """GPT-2 language model with the same interface as :class:`MosaicLM`."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if isinstance(module, ResidualProjection) else 0.02
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def check_tokens(self, idx: Tensor, offset: int = 0) -> None:
        super().check_tokens(idx)
        if offset + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence of length {offset + idx.shape[1]} exceeds GPTLM block_size {self.config.block_size}"
            )

    def _embed(self, idx: Tensor, offset: int = 0) -> Tensor:
        pos = torch.arange(offset, offset + idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))

    def _logits(self, x: Tensor) -> Tensor:
        return self.ln_f(x) @ self.wte.weight.T

    @torch.no_grad()
    def prefill(self, idx: Tensor) -> tuple[Tensor, GPTState]:
        self.check_tokens(idx)
        x = self._embed(idx)
        caches = []
        for block in self.blocks:
            x, cache = block.prefill(x)
            caches.append(cache)
        return self._logits(x[:, -1]), GPTState(caches, idx.shape[1])

    @torch.no_grad()
    def step(self, idx: Tensor, state: GPTState) -> Tensor:
        self.check_tokens(idx, offset=state.t)
        x = self._embed(idx, offset=state.t)
        for block, cache in zip(self.blocks, state.caches):
            x = block.step(x, cache)
        state.t += 1
        return self._logits(x[:, -1])
