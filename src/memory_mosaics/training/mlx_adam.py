"""MLX's Adam, as the reference three-moons code trains with it, on this project's parameters.

The reference (``ThreeMoons/``, Apple MLX) trains with ``mlx.optimizers.AdamW(lr, betas=(0.9, 0.999),
weight_decay=0)``; MLX's Adam has no bias correction by default and its eps is 1e-8::

    m <- b1 m + (1 - b1) g ;   v <- b2 v + (1 - b2) g^2 ;   w <- w (1 - lr wd) - lr m / (sqrt(v) + eps)

What it updates there are *raw* 6x6 weights W. Its complex layer uses ``complexify(W)``: per 2x2
block ``[[p, q], [r, s]]`` of W the weight is ``[[a, -b], [b, a]]`` with ``a = (p + s) / 2``,
``b = (r - q) / 2``, and the layer is initialised with W = complexify(W), so p = s and q = -r. The
gradient of each raw weight is then half that of the complex parameter it feeds: with g_a, g_b the
gradients of a and b (this project's ``ComplexLinear.re`` and ``.im``), p and s get g_a / 2, r gets
g_b / 2 and q gets -g_b / 2. The updates of p and s are equal and those of q and r opposite, so W
stays in complex form and a (= p) and b (= r) move by exactly the update of one raw weight whose
gradient is g / 2. That is what :class:`MLXAdam` computes, with ``raw_scale = 1/2`` for the complex
parameters: its state is the raw weight's (m/2 and v/4 of the moments of g), and the step is
``lr * (m/2) / (sqrt(v)/2 + eps) = lr * m / (sqrt(v) + 2 eps)``, an effective eps of 2e-8 per
complex parameter. ``tests/test_moons.py`` checks it against MLX's rule applied to the raw weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..layers import ComplexLinear

RAW_SCALE_COMPLEX = 0.5  # d(raw weight) / d(complex parameter) in the reference's complexify


class MLXAdam(torch.optim.Optimizer):
    """``mlx.optimizers.AdamW`` (bias_correction=False) on raw weights whose gradient is ``raw_scale * grad``.

    Per parameter group: ``lr``, ``betas``, ``eps``, ``weight_decay`` (MLX's decoupled decay,
    applied before the step) and ``raw_scale`` (1 for a plain weight; :data:`RAW_SCALE_COMPLEX`
    for a ``ComplexLinear`` part, see the module docstring).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        raw_scale: float = 1.0,
    ):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "raw_scale": raw_scale}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad * group["raw_scale"]  # the raw weight's gradient
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                m, v = state["m"], state["v"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.sub_(m.mul(lr).div_(v.sqrt().add_(eps)))
        return loss


def mlx_param_groups(module: nn.Module) -> list[dict]:
    """Parameter groups of ``module`` for :class:`MLXAdam`: ComplexLinear parts at raw_scale 1/2, the rest at 1."""
    complex_ids = {id(p) for m in module.modules() if isinstance(m, ComplexLinear) for p in m.parameters()}
    params = list(module.parameters())
    groups = [
        {"params": [p for p in params if id(p) in complex_ids], "raw_scale": RAW_SCALE_COMPLEX},
        {"params": [p for p in params if id(p) not in complex_ids], "raw_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]
