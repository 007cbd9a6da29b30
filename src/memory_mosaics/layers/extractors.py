"""Feature extractors: keys summarise the past, values peek one step into the future (spec 2.1, 5.2).

Every extractor works per head: it maps an input (B, T, d_in) to (B, H, T, Dh). Key extractors
return the *raw* key ``kbar`` (before normalisation and bandwidth, which the memory applies) and
the state to carry into the next call; value extractors expose ``project`` (v~ = W_psi x) and
``mix`` (the peek) separately so that decoding can complete a value when the next input arrives.

Reference parametrisations (reference code, spec 2.1): per-head scalars are stored as ``theta`` and
mapped through ``exp(10 * theta)``-type transforms (``EXP_SCALE = 10``). Ablations (``learn=False``)
keep a scalar at its reference initial value: it is then a buffer, saved with the weights, never trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ..common import frozen, split_heads
from ..ops.leaky_average import leaky_average
from ..ops.peek import peek_mix, peek_value

EXP_SCALE = 10.0


def per_head_scalars(module: nn.Module, name: str, init: Tensor, learn: bool = True) -> None:
    """Register ``init`` (H,) on ``module`` as a trained parameter, or (``learn=False``) as a saved
    buffer that stays at its initial value."""
    if learn:
        setattr(module, name, nn.Parameter(init))
    else:
        module.register_buffer(name, init)


class LinearKey(nn.Module):
    """Plain linear key ``k_t = W_phi x_t`` (no memory of the past: three moons, and the "current" ablation)."""

    def __init__(self, proj: nn.Module, n_head: int):
        super().__init__()
        self.proj, self.n_head = proj, n_head

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, None]:
        return split_heads(self.proj(x), self.n_head), None


class LeakyAverageKey(nn.Module):
    """Leaky-average key (spec 2.1): ``kbar_t = W_phi x_t + lambda_h * kbar_{t-1}``.

    ``lambda_h = exp(-10 |theta_h|)``, theta initialised ``linspace(0.5, 5, H) / 10`` so that lambda
    goes from 0.61 (long memory) down to 0.0067 (almost only the present) across heads.
    ``learn=False``: the decays stay at these initial values (ablation "fixed decay").
    """

    def __init__(self, proj: nn.Module, n_head: int, learn: bool = True):
        super().__init__()
        self.proj, self.n_head = proj, n_head
        per_head_scalars(self, "theta", torch.linspace(0.5, 5.0, n_head) / EXP_SCALE, learn)

    def log_decay(self) -> Tensor:
        """log lambda_h, shape (1, H, 1)."""
        return frozen(self, "log_decay", lambda: (-EXP_SCALE * self.theta.abs()).view(1, -1, 1))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        phi = split_heads(self.proj(x), self.n_head)
        if phi.shape[2] == 1 and state is not None and not torch.is_grad_enabled():  # one decoding step
            decay = frozen(self, "decay", lambda: self.log_decay().exp()[..., None])  # lambda_h, (1, H, 1, 1)
            kbar = torch.addcmul(phi, decay.to(phi.dtype), state[:, :, None])
        else:
            kbar = leaky_average(phi, self.log_decay(), state)
        return kbar, kbar[:, :, -1]


def step_decay(key: LinearKey | LeakyAverageKey, n_head: int) -> Tensor:
    """lambda_h (H,) of a key whose decoding step is ``kbar_t = W_phi x_t + lambda_h kbar_{t-1}``:
    the leaky average's decays, zeros for :class:`LinearKey` (its key is the present input only)."""
    if isinstance(key, LeakyAverageKey):
        return key.log_decay().exp().view(-1)
    return torch.zeros(n_head)


class GatedLeakyKey(nn.Module):
    """v2 gated, input-dependent key (spec 5.2):

        kbar_t = g_t * W_phi x_t + lambda_t * kbar_{t-1},  g_t = exp(W_g x_t),  lambda_t = exp(-|W_lambda x_t|)

    with one scalar gate and one scalar decay per head and time step.
    """

    def __init__(self, proj: nn.Module, d_in: int, n_head: int):
        super().__init__()
        self.proj, self.n_head = proj, n_head
        self.gate = nn.Linear(d_in, n_head, bias=False)
        self.decay = nn.Linear(d_in, n_head, bias=False)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        g = self.gate(x).exp().transpose(1, 2)[..., None]  # (B, H, T, 1)
        log_decay = -self.decay(x).abs().transpose(1, 2)  # (B, H, T)
        kbar = leaky_average(g * split_heads(self.proj(x), self.n_head), log_decay, state)
        return kbar, kbar[:, :, -1]


class PeekValue(nn.Module):
    """Value with a one-step peek (spec 2.1): ``vbar_t = gamma_h v~_t + (1 - gamma_h) v~_{t+1}``.

    ``v~ = W_psi x``; ``v~_{T+1} = 0`` at the last position (that value is never read).
    ``gamma``: per head, initialised U(0, 1) and learned (reference) or kept there (``learn=False``,
    ablation "fixed gamma"); or a constant float: 0.0 = pure peek (three moons), 1.0 = no peek
    (ablation "peek off": ``v_t`` is a function of ``x_t`` only).
    ``normalize``: ``v_t = alpha_h vbar_t / ||vbar_t||`` with ``alpha_h = exp(10 theta_h)``,
    theta initialised -0.05; otherwise ``v_t = vbar_t``.
    """

    def __init__(
        self, proj: nn.Module, n_head: int, gamma: float | None = None, normalize: bool = True, learn: bool = True
    ):
        super().__init__()
        self.proj, self.n_head, self.normalize = proj, n_head, normalize
        if gamma is None:
            per_head_scalars(self, "gamma", torch.rand(n_head), learn)
        else:
            self.register_buffer("gamma", torch.full((n_head,), float(gamma)), persistent=False)
        self.theta = nn.Parameter(torch.full((n_head,), -0.5 / EXP_SCALE)) if normalize else None

    def project(self, x: Tensor) -> Tensor:
        """v~ = W_psi x: (B, T, d_in) -> (B, H, T, Dh)."""
        return split_heads(self.proj(x), self.n_head)

    def alpha(self) -> Tensor | None:
        """alpha_h = exp(10 theta_h), (H,); None without normalisation."""
        return frozen(self, "alpha", lambda: (EXP_SCALE * self.theta).exp()) if self.normalize else None

    def mix(self, v_now: Tensor, v_next: Tensor) -> Tensor:
        """v_t from v~_t and v~_{t+1}, both (B, H, T, Dh) (one decoding step)."""
        return peek_mix(v_now, v_next, self.gamma, self.alpha())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (v, v~): values (B, H, T, Dh), and v~ whose last step completes v_{T} later."""
        vt = self.project(x)
        return peek_value(vt, self.gamma, self.alpha()), vt


class ComplexLinear(nn.Module):
    """A linear map of R^{2n} constrained to be complex: 2x2 blocks [[a, -b], [b, a]] (three moons).

    Input coordinates are (re_1, im_1, re_2, im_2, ...); ``n_out x n_in`` complex weights give
    ``2 * n_out * n_in`` real parameters (18 for a 6x6 map).
    """

    def __init__(self, in_features: int, out_features: int, init_std: float | None = None):
        super().__init__()
        if in_features % 2 or out_features % 2:
            raise ValueError("ComplexLinear needs even in/out features (pairs of real coordinates)")
        n_in, n_out = in_features // 2, out_features // 2
        std = init_std if init_std is not None else 1.0 / math.sqrt(in_features)
        self.re = nn.Parameter(torch.randn(n_out, n_in) * std)
        self.im = nn.Parameter(torch.randn(n_out, n_in) * std)

    @property
    def weight(self) -> Tensor:
        """The real (out_features, in_features) matrix."""
        top = torch.stack([self.re, -self.im], dim=-1)  # (n_out, n_in, 2)
        bottom = torch.stack([self.im, self.re], dim=-1)
        return torch.stack([top, bottom], dim=1).reshape(2 * self.re.shape[0], 2 * self.re.shape[1])

    def magnitude(self) -> Tensor:
        """|w| of the complex weights, (n_out, n_in)."""
        return torch.sqrt(self.re**2 + self.im**2)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T
