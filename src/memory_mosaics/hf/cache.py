"""The ``transformers`` cache of the package's models: each memory's stored pairs (and a GPT's KV
cache), as the package's own decoding state, so that ``generate`` costs one step per new token
instead of a forward over the whole sequence.

:class:`MosaicCache` wraps a :class:`~memory_mosaics.models.generation.RaggedPrefill` (one native
decoding state per group of rows of equal prompt length). :func:`select_rows` reorders any native
state along its batch dimension (beam search).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor
from transformers import Cache

from ..common import GrowingBuffer
from ..models.generation import RaggedPrefill


def select_rows(state: Any, rows: Tensor) -> Any:
    """A copy of a native decoding state keeping batch rows ``rows`` (in that order): tensors and
    growing buffers are indexed along dim 0; dataclasses, lists and tuples are walked; other values
    (step counters, None) are shared."""
    if isinstance(state, Tensor):
        return state.index_select(0, rows.to(state.device))
    if isinstance(state, GrowingBuffer):
        return GrowingBuffer(state.view().index_select(0, rows.to(state.view().device)))
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(
            state, **{f.name: select_rows(getattr(state, f.name), rows) for f in dataclasses.fields(state)}
        )
    if isinstance(state, (list, tuple)):
        return type(state)(select_rows(s, rows) for s in state)
    return state


class MosaicCache(Cache):
    """Decoding state of a batch: the memories' stored (key, value) pairs and extractor states.

    Built by the model's first forward (the prompt, left-padded with an ``attention_mask`` when the
    prompts differ in length); each later forward feeds new tokens through :meth:`step`.
    """

    def __init__(self, model: Any, idx: Tensor, lengths: Tensor):
        super().__init__(layers=[])
        self.decoder = RaggedPrefill(model, idx, lengths)
        self.seen_tokens = idx.shape[1]

    @property
    def last_logits(self) -> Tensor:
        """Logits (B, V) after the latest token of each row."""
        return self.decoder.logits

    def step(self, tokens: Tensor) -> Tensor:
        """Feed tokens (B, n), n >= 1, one step at a time; return their logits (B, n, V)."""
        out = []
        for i in range(tokens.shape[1]):
            out.append(self.decoder.step(tokens[:, i : i + 1]))
            self.seen_tokens += 1
        self.decoder.logits = out[-1]
        return torch.stack(out, dim=1)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions seen, padding included (as ``input_ids`` counts them)."""
        return self.seen_tokens

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Row i takes the state of row ``beam_idx[i]`` (beam search; both in the same length group)."""
        beam_idx = beam_idx.cpu()
        groups = []
        for rows, state in self.decoder.groups:
            local = {int(r): j for j, r in enumerate(rows.tolist())}
            try:
                pick = torch.tensor([local[int(beam_idx[r])] for r in rows.tolist()])
            except KeyError:
                raise ValueError("beam search reordered rows across prompts of different lengths") from None
            groups.append((rows, select_rows(state, pick)))
        self.decoder.groups = groups
        self.decoder.logits = self.decoder.logits.index_select(0, beam_idx.to(self.decoder.logits.device))

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_linear(self) -> list[bool]:
        return [False]

    @property
    def is_sliding(self) -> list[bool]:
        return [False]
