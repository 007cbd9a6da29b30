"""Sparse retrieval weights: the top-k stored pairs each query reads, without a (T, T) tensor.

A contextual memory's weights (spec eq. 2, :func:`..ops.retrieval.causal_retrieval_weights`) are
computed here for ``chunk`` query rows at a time, so that a long text costs O(chunk x T) memory:

    w[t, s] = softmax_s(q_t . k_s) over the s with min_lag <= t - s <= max_lag   (0 if there is none)

Each chunk keeps the k largest weights of every row, with their source positions, and two
statistics of the whole row: its entropy (nats; ``exp(entropy)`` is the effective number of pairs
read) and the mean lag ``sum_s w[t, s] (t - s)`` (the average retrieval distance).
``min_lag = 0`` gives a transformer's causal attention (a query also reads its own position).
The reference is the dense weight matrix (tests compare both).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SparseWeights:
    """Top-k retrieval of H heads over T queries.

    sources (H, T, k) long: source positions, largest weight first, -1 where fewer than k pairs are
    readable; weights (H, T, k): their weights (0 at -1); entropy (H, T) and distance (H, T): of the
    full row (0 for a query with no readable pair); readable (T,): number of readable pairs.
    """

    sources: Tensor
    weights: Tensor
    entropy: Tensor
    distance: Tensor
    readable: Tensor


def readable_mask(rows: Tensor, T: int, min_lag: int, max_lag: int | None) -> Tensor:
    """(len(rows), T) bool: query t may read pair s iff min_lag <= t - s <= max_lag."""
    lag = rows[:, None] - torch.arange(T, device=rows.device)[None, :]
    allowed = lag >= min_lag
    if max_lag is not None:
        allowed &= lag <= max_lag
    return allowed


@torch.no_grad()
def sparse_causal_weights(
    q: Tensor, k: Tensor, top_k: int, min_lag: int = 1, max_lag: int | None = None, chunk: int = 256
) -> SparseWeights:
    """q, k (H, T, D) (one sequence; the bandwidth already folded into q) -> :class:`SparseWeights`."""
    H, T, _ = q.shape
    kk = min(top_k, T)
    sources, weights, entropy, distance, readable = [], [], [], [], []
    positions = torch.arange(T, device=q.device)
    for start in range(0, T, chunk):
        rows = positions[start : start + chunk]
        allowed = readable_mask(rows, T, min_lag, max_lag)  # (C, T)
        scores = (q[:, rows].float() @ k.float().transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
        w = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # (H, C, T), rows with no pair -> 0
        top_w, top_s = torch.topk(w, kk, dim=-1)  # sorted, largest first
        top_s = torch.where(allowed[None].expand(H, -1, -1).gather(-1, top_s), top_s, -1)
        sources.append(top_s)
        weights.append(torch.where(top_s >= 0, top_w, 0.0))
        entropy.append(torch.special.entr(w).sum(-1))  # -sum_s w log w, 0 log 0 = 0
        distance.append((w * (rows[:, None] - positions[None, :]).to(w.dtype)).sum(-1))
        readable.append(allowed.sum(-1))
    return SparseWeights(
        torch.cat(sources, 1), torch.cat(weights, 1), torch.cat(entropy, 1), torch.cat(distance, 1), torch.cat(readable)
    )


@torch.no_grad()
def sparse_rows(w: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k of dense weight rows w (H, T, N) over a fixed bank (persistent memory):
    (slots (H, T, k), weights (H, T, k), entropy (H, T))."""
    top_w, top_i = torch.topk(w.float(), min(top_k, w.shape[-1]), dim=-1)
    return top_i, top_w, torch.special.entr(w.float()).sum(-1)


def to_dense(sparse: SparseWeights) -> Tensor:
    """The (H, T, T) weight matrix of the kept pairs (exact when top_k covers every readable pair)."""
    H, T, _ = sparse.sources.shape
    dense = sparse.weights.new_zeros(H, T, T)
    keep = sparse.sources >= 0
    return dense.scatter_add_(-1, sparse.sources.clamp_min(0), torch.where(keep, sparse.weights, 0.0))
