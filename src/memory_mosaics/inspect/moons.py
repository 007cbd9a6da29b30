"""The three-moons model (spec 4.1) in the explorer: retrieval maps and heads by moon.

For each trained memory (1 head, 3 heads) on one window x (1, T, 6) of a system: the sparse
retrieval of every head (:func:`.memories.contextual`: weights ``softmax_s(50 k_t . k_s)``, s < t),
the share of each head's key (W_phi) and value (W_psi) weight energy read from each moon
(:func:`..models.moons.moon_shares`) and the disentanglement score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers import ContextualMemory
from ..models.moons import disentanglement, moon_shares
from . import memories
from .export import memory_dict, rounded


@torch.no_grad()
def moons_dict(
    models: dict[str, ContextualMemory],
    x: Tensor,
    periods_steps: list[float],
    combined_steps: float,
    top_k: int = 16,
    title: str = "three moons",
) -> dict:
    """The page's data (``kind = "moons"``): x (1, T, 6) the window; models: name -> trained memory."""
    out = []
    for name, mem in models.items():
        mem.eval()
        H = mem.key.n_head
        ins = memories.contextual(mem, x, name, top_k)
        shares = {"key": moon_shares(mem.key.proj, H), "value": moon_shares(mem.value.proj, H)}
        out.append(
            {
                "name": name,
                "memory": memory_dict(ins),
                "shares": {part: rounded(s, 3) for part, s in shares.items()},
                "disentanglement": round(disentanglement(mem), 4),
            }
        )
    return {
        "kind": "moons",
        "title": title,
        "x": rounded(x[0], 3),
        "periods_steps": list(periods_steps),
        "combined_steps": float(combined_steps),
        "models": out,
    }
