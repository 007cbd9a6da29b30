"""Sampling options of :meth:`LanguageModel.generate` and the pieces it decodes with.

* :class:`Sampling`: repetition penalty, temperature, top-k and top-p, applied to a row's logits in
  the order Hugging Face's ``generate`` applies them (penalty, then temperature, top-k, top-p), so
  that both paths sample the same tokens from the same random numbers.
* :class:`RaggedPrefill`: a batch of left-padded prompts of different lengths is decoded as groups
  of rows of equal length, one decoding state per group: every row sees exactly its own tokens, as
  when it is decoded alone (a Mosaic has no positions to shift, but its leaky averages, stored pairs
  and adaptive bandwidths must not see padding).
* :class:`StopStrings`: a row is finished once its generated text contains one of the strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sampling:
    """How a next token is chosen from logits (B, V).

    temperature 0 means greedy (argmax after the repetition penalty). ``top_k``: keep the k largest
    logits; ``top_p``: keep the smallest set of most likely tokens whose probability reaches top_p
    (nucleus sampling, at least one token); ``repetition_penalty`` p (CTRL): the logit l of a token
    already in the row (prompt or generated) becomes l / p if l > 0, else l * p.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty is not None and not (
            self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)
        ):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")

    def scores(self, logits: Tensor, seen: Tensor | None) -> Tensor:
        """Processed scores (B, V) float32: ``-inf`` where a token may not be drawn. ``seen`` (B, V)
        bool marks the tokens already in each row (for the repetition penalty)."""
        scores = logits.float()
        if self.repetition_penalty is not None and seen is not None:
            p = self.repetition_penalty
            scores = torch.where(seen, torch.where(scores < 0, scores * p, scores / p), scores)
        if self.temperature == 0:
            return scores
        scores = scores / self.temperature
        if self.top_k is not None:
            kth = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            ascending, order = torch.sort(scores, dim=-1)
            mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)  # probability of this token and all less likely
            drop = mass_below <= 1 - self.top_p
            drop[:, -1] = False  # the most likely token always stays
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return scores

    def next_token(self, logits: Tensor, seen: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Next ids (B,) from logits (B, V): argmax at temperature 0, else one softmax draw per row."""
        scores = self.scores(logits, seen)
        if self.temperature == 0:
            return scores.argmax(dim=-1)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)[:, 0]


def prompt_lengths(idx: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Real tokens per row (B,) of left-padded prompts idx (B, T) with attention_mask (B, T) (1 =
    token, 0 = padding before it); every row full when the mask is None. Raises ValueError unless
    each mask row is zeros then at least one one."""
    B, T = idx.shape
    if attention_mask is None:
        return torch.full((B,), T, dtype=torch.long)
    if attention_mask.shape != idx.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != prompt shape {tuple(idx.shape)}")
    mask = attention_mask.to(torch.long).cpu()
    lengths = mask.sum(dim=1)
    expected = torch.arange(T)[None, :] >= (T - lengths)[:, None]
    if not torch.equal(mask.bool(), expected) or bool((lengths == 0).any()):
        raise ValueError("attention_mask must left-pad each prompt: zeros, then at least one token (ones)")
    return lengths


class RaggedPrefill:
    """Decoding state of a batch of prompts of different lengths: one state per group of rows of
    equal length, each prefilled on its rows' real tokens only.

    ``model`` provides ``prefill(idx) -> (logits (b, V), state)`` and ``step(idx (b, 1), state) -> logits``;
    ``step``, if given, replaces ``model.step`` (e.g. a compiled one).
    """

    def __init__(self, model: Any, idx: Tensor, lengths: Tensor, step: Callable[[Tensor, Any], Tensor] | None = None):
        self.model = model
        self._step = model.step if step is None else step
        self.groups: list[tuple[Tensor, Any]] = []
        B, T = idx.shape
        logits = None
        for n in sorted(set(lengths.tolist())):
            rows = (lengths == n).nonzero()[:, 0].to(idx.device)
            group_logits, state = model.prefill(idx[rows, T - n :])
            if logits is None:
                logits = group_logits.new_empty(B, group_logits.shape[-1])
            logits[rows] = group_logits
            self.groups.append((rows, state))
        self.logits = logits  # (B, V): each row's logits after its last prompt token

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens (B, 1), one per row; return the logits (B, V)."""
        logits = None
        for rows, state in self.groups:
            group_logits = self._step(tokens[rows], state)
            if logits is None:
                logits = group_logits.new_empty(tokens.shape[0], group_logits.shape[-1])
            logits[rows] = group_logits
        return logits


class StopStrings:
    """Finishes a row once the text of its generated tokens contains one of ``stops``.

    ``decode``: ids -> text (the tokenizer's). Only the generated tokens are decoded, so a stop
    string inside the prompt does not count."""

    def __init__(self, stops: Sequence[str], decode: Callable[[list[int]], str], batch: int):
        if any(not s for s in stops):
            raise ValueError("stop strings must be non-empty")
        self.stops, self.decode = tuple(stops), decode
        self.generated: list[list[int]] = [[] for _ in range(batch)]

    def update(self, tokens: Tensor) -> Tensor:
        """Record tokens (B,) and return which rows' text now contains a stop string (B,) bool."""
        hits = []
        for row, t in zip(self.generated, tokens.tolist()):
            row.append(t)
            text = self.decode(row)
            hits.append(any(s in text for s in self.stops))
        return torch.tensor(hits, dtype=torch.bool, device=tokens.device)


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the first occurrence of any of ``stops``."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]
