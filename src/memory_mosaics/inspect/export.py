"""Plain JSON-ready dictionaries of an inspection (the page's data and ``mosaics inspect --json``).

Language (``kind = "language"``)::

    tokens [T] str, ids [T], loss [T-1] (loss[t] = -log p(ids[t+1])), vocab {id: str} of every listed id,
    layers [L]: norms {branch: [T]}, lens {ids [T][n], p [T][n], target_logp [T-1]},
                memories [M]: name, kind, min_lag, max_lag, token_offset, k,
                              heads [H] {beta, decay, gamma, ..., effective_pairs, distance, copy},
                              src [H][T*k] (row-major (t, j); -1 = none), w [H][T*k], per_token {name: [H][T]}

Weights and other reals are rounded to ``DIGITS`` decimals: the page needs no more, and the file
stays small (sparse top-k, never a T x T matrix).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .language import Inspection
from .memories import MemoryInspection

DIGITS = 4


def rounded(x: Tensor, digits: int = DIGITS) -> list:
    """A tensor as nested lists of floats rounded to ``digits`` decimals (NaN and infinities -> None)."""
    x = torch.round(x.detach().double().cpu() * 10**digits) / 10**digits  # float64: 0.1234, not 0.12340000271
    values = x.tolist()
    return values if bool(x.isfinite().all()) else _finite_or_none(values)


def _finite_or_none(values):
    if isinstance(values, list):
        return [_finite_or_none(v) for v in values]
    return values if math.isfinite(values) else None


def _scalar(x: Tensor) -> float | None:
    v = float(x)
    return round(v, DIGITS) if math.isfinite(v) else None


def memory_dict(m: MemoryInspection, copy: Tensor | None = None) -> dict:
    """One memory: per-head summary, sparse retrieval (flattened per head), per-token parameters."""
    r = m.retrieval
    H, T, k = r.sources.shape
    has_pairs = r.readable > 0
    heads = []
    for h in range(H):
        row = {name: _scalar(v[h]) for name, v in m.heads.items()}
        if has_pairs.any():
            row["effective_pairs"] = _scalar(r.entropy[h][has_pairs].exp().mean())
            row["distance"] = _scalar(r.distance[h][has_pairs].mean()) if m.kind != "persistent" else None
        row["copy"] = _scalar(copy[h]) if copy is not None else None
        heads.append(row)
    return {
        "name": m.name,
        "kind": m.kind,
        "min_lag": m.min_lag,
        "max_lag": m.max_lag,
        "token_offset": m.token_offset,
        "k": k,
        "heads": heads,
        "src": r.sources.reshape(H, T * k).tolist(),
        "w": rounded(r.weights.reshape(H, T * k)),
        "per_token": {name: rounded(v) for name, v in m.per_token.items()},
    }


def language_dict(ins: Inspection, tokens: list[str], vocab: dict[int, str], title: str = "") -> dict:
    """The page's data for a language model. tokens: the text of each id of ``ins.ids``; vocab: the
    text of any id (every id in the lens tables is looked up there)."""
    copies = ins.copy_scores()
    layers = []
    listed: set[int] = set()
    for layer, layer_copies in zip(ins.layers, copies):
        listed.update(layer.lens_ids.flatten().tolist())
        layers.append(
            {
                "norms": {name: rounded(v, 3) for name, v in layer.norms.items()},
                "lens": {
                    "ids": layer.lens_ids.tolist(),
                    "p": rounded(layer.lens_probs),
                    "target_logp": rounded(layer.lens_target_logprob),
                },
                "memories": [
                    memory_dict(m, c if m.kind != "persistent" else None) for m, c in zip(layer.memories, layer_copies)
                ],
            }
        )
    return {
        "kind": "language",
        "title": title or "memory explorer",
        "model": ins.config,
        "tokens": tokens,
        "ids": ins.ids.tolist(),
        "loss": rounded(ins.loss),
        "mean_loss": _scalar(ins.loss.mean()) if ins.loss.numel() else None,
        "vocab": {str(i): vocab[i] for i in sorted(listed)},
        "layers": layers,
    }
