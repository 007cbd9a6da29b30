"""Windowed retrieval in O(T w): v2's short-term memory without a (T, T) mask (spec section 5.3).

The memory of :mod:`.retrieval` with a finite window: query t reads the pairs s with
``min_lag <= t - s <= max_lag`` (``w = max_lag - min_lag + 1`` of them). After the shift trick
(queries ``q[min_lag:]`` against pairs ``k[:-min_lag]``), query i reads pairs j with
``0 <= i - j <= W``, ``W = w - 1``. Cut the n = T - min_lag shifted positions into blocks of
``L >= w`` positions: the pairs of a query of block b lie in blocks b - 1 and b. So each block of
queries attends to the 2 L pairs of its own and its previous block under one (L, 2 L) band mask
(plus, for block 0, the rule that pairs before the first are padding), and the whole memory costs
O(n L) compute and memory instead of O(n^2): linear in T for a fixed window.

Shapes: ``q``, ``k`` (B, H, T, Dk); ``v`` (B, H, T, Dv); returns (B, H, T, Dv), the same function as
:func:`.retrieval.causal_retrieval_reference` (tests compare values and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_BLOCK = 64  # blocks of at least this many positions: fewer, larger attention problems


def block_size(window: int) -> int:
    """L: the window w rounded up to a multiple of 16, at least :data:`MIN_BLOCK`."""
    return max(MIN_BLOCK, -(-window // 16) * 16)


def _band_mask(n_blocks: int, L: int, W: int, device: torch.device) -> Tensor:
    """(n_blocks, L, 2 L) boolean: query r of block b may read key c of blocks (b - 1, b) iff
    0 <= (b L + r) - ((b - 1) L + c) <= W and the key is not before position 0."""
    r = torch.arange(L, device=device)[:, None]
    c = torch.arange(2 * L, device=device)[None, :]
    lag = L + r - c  # query time minus key time, the same in every block
    band = (lag >= 0) & (lag <= W)
    first = c >= L  # block 0: keys of "block -1" are padding
    return torch.stack([band & first] + [band] * (n_blocks - 1)) if n_blocks > 1 else (band & first)[None]


def banded_retrieval(
    q: Tensor, k: Tensor, v: Tensor, min_lag: int, max_lag: int, dropout_p: float = 0.0, block: int | None = None
) -> Tensor:
    """Retrieval over the window ``min_lag <= t - s <= max_lag`` in O(T w) (module docstring).

    ``block``: the block size L (default :func:`block_size`), at least the window ``w``."""
    B, H, T, _ = q.shape
    W = max_lag - min_lag
    L = block_size(W + 1) if block is None else block
    if L < W + 1:
        raise ValueError(f"block ({L}) must hold the window ({W + 1} pairs)")
    n = T - min_lag
    if n <= 0:
        return v.new_zeros(B, H, T, v.shape[-1])
    nb = -(-n // L)
    pad = nb * L - n
    qs = F.pad(q[:, :, min_lag:], (0, 0, 0, pad)).view(B, H, nb, L, -1)
    # keys and values of blocks (b - 1, b) for every block b: one block of zeros in front
    ks = F.pad(k[:, :, :n], (0, 0, L, pad)).view(B, H, nb + 1, L, -1)
    vs = F.pad(v[:, :, :n], (0, 0, L, pad)).view(B, H, nb + 1, L, -1)
    ks = torch.cat([ks[:, :, :-1], ks[:, :, 1:]], dim=3)  # (B, H, nb, 2L, Dk)
    vs = torch.cat([vs[:, :, :-1], vs[:, :, 1:]], dim=3)
    mask = _band_mask(nb, L, W, q.device)  # (nb, L, 2L), broadcast over B, H
    out = F.scaled_dot_product_attention(
        qs.flatten(1, 2),
        ks.flatten(1, 2),
        vs.flatten(1, 2),
        attn_mask=mask.repeat(H, 1, 1),
        dropout_p=dropout_p,
        scale=1.0,
    )
    out = out.view(B, H, nb * L, -1)[:, :, :n]
    return F.pad(out, (0, 0, min_lag, 0))  # the first min_lag queries see no pair: output 0
