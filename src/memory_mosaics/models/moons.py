"""The 54-parameter three-moons model (spec 4.1): one contextual memory, every weight complex.

    k_t = W_phi x_t ,   v_t = W_psi x_{t+1} ,   y_t = W_z concat_h sum_{s<t} softmax_s(50 k_t . k_s) v_s

built from the library's :class:`ContextualMemory` (no key/value normalisation, no leaky average,
fixed bandwidth beta = 50, pure peek gamma = 0). W_phi, W_psi, W_z are 3x3 complex matrices
(:class:`ComplexLinear`, 18 real parameters each). ``n_head = 1``: one head of size 6;
``n_head = 3``: three heads of size 2, one complex coordinate each.

Initialisation: real and imaginary parts N(0, INIT_STD^2) with INIT_STD = 1/6, the variance of the
reference code (an MLX Linear, U(+-1/sqrt(6)), averaged into complex blocks: var = 1/36). The
library default 1/sqrt(6) makes every initial score 50 k_t . k_s about six times larger (a nearly
hard argmax); it trained slower in a short check (docs/three-moons.md).
"""

from __future__ import annotations

from itertools import permutations

import torch
from torch import Tensor

from ..layers import ComplexLinear, ContextualMemory, FixedBandwidth, LinearKey, PeekValue

D = 6  # three moons x (re, im)
BETA = 50.0
INIT_STD = 1.0 / 6.0


def moons_memory(n_head: int) -> ContextualMemory:
    """The three-moons memory with ``n_head`` in (1, 3): (B, T, 6) -> (B, T, 6), y_t predicts x_{t+1}."""
    if n_head not in (1, 3):
        raise ValueError(f"the three-moons model has 1 or 3 heads, got {n_head}")
    return ContextualMemory(
        LinearKey(ComplexLinear(D, D, INIT_STD), n_head),
        PeekValue(ComplexLinear(D, D, INIT_STD), n_head, gamma=0.0, normalize=False),
        FixedBandwidth(BETA),
        ComplexLinear(D, D, INIT_STD),
        normalize_keys=False,
    )


@torch.no_grad()
def generate(memory: ContextualMemory, context: Tensor, n_steps: int) -> Tensor:
    """Condition on ``context`` x_0 .. x_{c-1} (B, c, 6) and predict x_c .. x_{c+n_steps-1}: (B, n_steps, 6).

    The first prediction is the prefill's last output; each next one comes from :meth:`step` fed
    with the previous prediction (autoregressive, the memory's incremental state is the cache).
    """
    y, state = memory.prefill(context)
    out = [y[:, -1:]]
    for _ in range(n_steps - 1):
        out.append(memory.step(out[-1], state))
    return torch.cat(out, dim=1)


def moon_shares(layer: ComplexLinear, n_head: int) -> Tensor:
    """Fraction of each head's weight energy sum |w|^2 read from each moon: (H, 3), rows sum to 1."""
    energy = layer.magnitude().square()  # (3 complex outputs, 3 moons)
    per_head = energy.view(n_head, -1, energy.shape[1]).sum(dim=1)  # (H, 3)
    return per_head / per_head.sum(dim=1, keepdim=True)


@torch.no_grad()
def disentanglement(memory: ContextualMemory) -> float:
    """Mean over heads of the share of key and value weight energy on one moon, best head->moon map.

    share[h, m] = (key share + value share) / 2 (:func:`moon_shares`); the score is
    max over injective maps pi of mean_h share[h, pi(h)]. 1.0: each head reads exactly one moon.
    3 heads reading all moons evenly score 1/3; one head scores its largest moon share (>= 1/3).
    """
    H = memory.key.n_head
    share = (moon_shares(memory.key.proj, H) + moon_shares(memory.value.proj, H)) / 2
    return max(sum(share[h, m].item() for h, m in enumerate(pi)) / H for pi in permutations(range(3), H))
