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

from ..layers.cache import GrowingBuffer
from ..layers.extractors import merge_heads, split_heads
from .base import LanguageModel, ModelConfig


@dataclass
class GPTConfig(ModelConfig):
    """Hyper-parameters of :class:`GPTLM` (defaults: GPT-2 small with a 512-token context)."""

    model_type = "gpt"

    vocab_size: int = 50304
    block_size: int = 512
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.05
    bias: bool = False

    def __post_init__(self):
        self._check_positive("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        self._check_probability("dropout")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        return split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)

    def forward(self, x: Tensor, cache: list | None = None) -> Tensor:
        """x (B, T, d). With ``cache`` (an empty list) the keys and values are stored into it."""
        q, k, v = self._qkv(x)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if cache is not None:
            cache.extend([GrowingBuffer(k), GrowingBuffer(v)])
        return self.resid_dropout(self.c_proj(merge_heads(y)))

    def step(self, x: Tensor, cache: list) -> Tensor:
        """One position x (B, 1, d) attending to the cache and itself."""
        q, k, v = self._qkv(x)
        cache[0].append(k)
        cache[1].append(v)
        y = F.scaled_dot_product_attention(q, cache[0].view(), cache[1].view())
        return self.c_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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

    def forward(self, x: Tensor, cache: list | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))

    def step(self, x: Tensor, cache: list) -> Tensor:
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
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 0.02
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
    def prefill(self, idx: Tensor) -> tuple[Tensor, dict]:
        self.check_tokens(idx)
        x = self._embed(idx)
        caches = [[] for _ in self.blocks]
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache)
        return self._logits(x[:, -1]), {"caches": caches, "t": idx.shape[1]}

    @torch.no_grad()
    def step(self, idx: Tensor, state: dict) -> Tensor:
        self.check_tokens(idx, offset=state["t"])
        x = self._embed(idx, offset=state["t"])
        for block, cache in zip(self.blocks, state["caches"]):
            x = block.step(x, cache)
        state["t"] += 1
        return self._logits(x[:, -1])
