"""``inspect(model, idx)``: everything the explorer shows about a language model on one text.

The model runs its own forward pass, block by block (``model._embed``, each block, ``model._logits``:
the same calls as ``LanguageModel.forward``); forward hooks on each block's residual branches
capture the input each memory received and the output it added to the residual stream. From the
inputs, :mod:`.memories` recomputes each memory's sparse retrieval; from the stream after each
block, the logit lens ``softmax(_logits(x_l))`` (at the last block: the model's own prediction).

Works for the Mosaic (v1 and v2 switches) and the GPT baseline; a branch without retrieval
(v2's SwiGLU, GPT's MLP) has only its contribution norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import ContextualMemory, PersistentMemory
from ..layers.multilevel import ShortLongMemory
from ..models.gpt import CausalSelfAttention
from . import memories
from .memories import MemoryInspection


@dataclass
class LayerInspection:
    """One block: its memories, the norm ||branch output_t|| of each residual branch (name -> (T,),
    "stream" = ||x_t|| after the block), and the logit lens after the block: top ``lens_k`` next
    tokens (T, n) with their probabilities, and the log-probability of the actual next token (T - 1,)."""

    memories: list[MemoryInspection]
    norms: dict[str, Tensor]
    lens_ids: Tensor
    lens_probs: Tensor
    lens_target_logprob: Tensor


@dataclass
class Inspection:
    """A model on one text: ids (T,); layers; the model's next-token distribution (the last layer's
    lens: ``top_ids``, ``top_probs`` (T, n)); ``loss`` (T - 1,) = -log p(ids[t + 1] | ids[:t + 1]);
    ``predicted`` (T,) = argmax; ``config``: the model's config as a dict."""

    ids: Tensor
    layers: list[LayerInspection]
    loss: Tensor
    predicted: Tensor
    config: dict = field(default_factory=dict)

    @property
    def top_ids(self) -> Tensor:
        return self.layers[-1].lens_ids

    @property
    def top_probs(self) -> Tensor:
        return self.layers[-1].lens_probs

    def copy_scores(self) -> list[list[Tensor]]:
        """[layer][memory] -> (H,) copy score of each head (:meth:`MemoryInspection.copy_score`)."""
        return [[m.copy_score(self.ids, self.predicted) for m in layer.memories] for layer in self.layers]


def _branch_memories(module: nn.Module, name: str, h: Tensor, top_k: int, chunk: int) -> list[MemoryInspection]:
    """The memories inside one residual branch (none for a feed-forward branch)."""
    if isinstance(module, ContextualMemory):
        return [memories.contextual(module, h, name, top_k, chunk)]
    if isinstance(module, ShortLongMemory):
        return [
            memories.contextual(module.short, h, "short", top_k, chunk),
            memories.contextual(module.long, h, "long", top_k, chunk),
        ]
    if isinstance(module, CausalSelfAttention):
        return [memories.attention(module, h, name, top_k, chunk)]
    if isinstance(module, PersistentMemory):
        return [memories.persistent(module, h, name, top_k)]
    return []


def _lens(model: nn.Module, x: Tensor, ids: Tensor, lens_k: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Logit lens of the stream x (T, d): top ids (T, n), their probabilities, log p(ids[t + 1]) (T - 1,).

    log p = logits - logsumexp(logits), computed for ``chunk`` positions at a time: no (T, V) tensor
    (V = 50k and T = 2,000 would be 400 MB per layer)."""
    top_ids, top_p, target = [], [], []
    for start in range(0, x.shape[0], chunk):
        logits = model._logits(x[start : start + chunk]).float()  # (C, V)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        top_logits, ids_c = torch.topk(logits, min(lens_k, logits.shape[-1]), dim=-1)
        top_ids.append(ids_c)
        top_p.append((top_logits - lse).exp())
        nxt = ids[start + 1 : start + 1 + logits.shape[0]]  # the next token of each position that has one
        target.append(logits[: nxt.shape[0]].gather(-1, nxt[:, None])[:, 0] - lse[: nxt.shape[0], 0])
    return torch.cat(top_ids), torch.cat(top_p), torch.cat(target)


@torch.no_grad()
def inspect(model: nn.Module, idx: Tensor, top_k: int = 8, lens_k: int = 5, chunk: int = 256) -> Inspection:
    """Inspect a language model (``MosaicLM`` or ``GPTLM``) on one sequence ``idx`` (T,) or (1, T).

    top_k: sources (or P-mem slots) kept per query and head; lens_k: next tokens kept per position
    and layer; chunk: query rows per weight computation (memory O(chunk x T)) and positions per
    logit-lens step (O(chunk x V)).
    """
    if idx.dim() not in (1, 2) or (idx.dim() == 2 and idx.shape[0] != 1):
        raise ValueError(f"inspect takes one sequence, (T,) or (1, T) token ids, got shape {tuple(idx.shape)}")
    idx = idx.reshape(1, -1).long()
    model.check_tokens(idx)
    was_training = model.training
    model.eval()
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name):
        def save(module, inputs, output):
            captured[name] = (inputs[0], output)

        return save

    try:
        x = model._embed(idx)
        layers = []
        for block in model.blocks:
            branches = [(n, m) for n, m in block.named_children() if not isinstance(m, nn.LayerNorm)]
            handles = [m.register_forward_hook(hook(n)) for n, m in branches]
            try:
                x = block(x)
            finally:
                for handle in handles:
                    handle.remove()
            found, norms = [], {}
            for name, module in branches:
                h, out = captured.pop(name)
                found += _branch_memories(module, name, h, top_k, chunk)
                norms[name] = out[0].float().norm(dim=-1)
            norms["stream"] = x[0].float().norm(dim=-1)
            layers.append(LayerInspection(found, norms, *_lens(model, x[0], idx[0], lens_k, chunk)))
    finally:
        model.train(was_training)
    last = layers[-1]
    return Inspection(idx[0], layers, -last.lens_target_logprob, last.lens_ids[:, 0], model.config.to_dict())
