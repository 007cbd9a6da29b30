"""The value peek (spec section 2.1): each value looks one step into the future.

    vbar_t = gamma_h v~_t + (1 - gamma_h) v~_{t+1}        (v~_{T} = 0 past the last step)
    v_t    = alpha_h vbar_t / ||vbar_t||                   (when normalised; else v_t = vbar_t)

Shapes: ``v_tilde`` (B, H, T, D); ``gamma`` and ``alpha`` (H,) (``alpha`` None: no normalisation);
returns v (B, H, T, D).

* :func:`peek_mix` is the formula for given ``v~_t`` and ``v~_{t+1}`` (also used one step at a time
  while decoding).
* :func:`peek_value_reference` applies it to a whole sequence with autograd through every step.
* :func:`peek_value` computes the same values with :class:`PeekValue`, an autograd function that
  keeps only ``v~`` for backward and recomputes ``vbar`` there, instead of keeping ``v~``, its
  shifted copy and ``vbar``. On the CPU its forward and backward are one pass each of the C kernel
  of :mod:`.unit_rows` (which reads ``v~`` in place, through the transposed view the value
  projection gives, and writes ``dL/dv~`` in the same layout); elsewhere, the torch operations below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common import exporting, inverse_norm
from . import unit_rows


def _heads(p: Tensor, like: Tensor) -> Tensor:
    """A per-head (H,) scalar as (1, H, 1, 1) in the dtype of the values ``like`` (no promotion to fp32)."""
    return p.view(1, -1, 1, 1).to(like.dtype)


def peek_mix(v_now: Tensor, v_next: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    """v from v~_t and v~_{t+1}, both (B, H, T, D) (the module docstring's two lines)."""
    vbar = torch.lerp(v_next, v_now, _heads(gamma, v_now))  # gamma v_now + (1 - gamma) v_next
    if alpha is None:
        return vbar
    return vbar * (_heads(alpha, vbar) * inverse_norm(vbar))


def _next(v_tilde: Tensor) -> Tensor:
    """v~_{t+1}, with 0 after the last step."""
    return F.pad(v_tilde, (0, 0, 0, 1))[:, :, 1:]


def peek_value_reference(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    return peek_mix(v_tilde, _next(v_tilde), gamma, alpha)


class PeekValue(torch.autograd.Function):
    """:func:`peek_value_reference` with a backward that recomputes vbar from v~.

    With G = dL/dv, vhat = vbar / ||vbar||:
        dL/dvbar = alpha / ||vbar|| (G - vhat <vhat, G>)   (G itself without normalisation)
        dL/dalpha_h = sum <G, vhat>,   dL/dgamma_h = sum <dL/dvbar_t, v~_t - v~_{t+1}>
        dL/dv~_t = gamma dL/dvbar_t + (1 - gamma) dL/dvbar_{t-1}
    """

    @staticmethod
    def forward(ctx, v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
        ctx.kernel = unit_rows.supports(v_tilde)
        v = (unit_rows.peek_forward if ctx.kernel else peek_value_reference)(v_tilde, gamma, alpha)
        ctx.save_for_backward(v_tilde, gamma, alpha)
        return v

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        v_tilde, gamma, alpha = ctx.saved_tensors
        if ctx.kernel:
            dv, dgamma, dalpha = unit_rows.peek_backward(v_tilde, gamma, alpha, grad)
            need = ctx.needs_input_grad
            return (
                dv if need[0] else None,
                dgamma.to(gamma.dtype) if need[1] else None,
                dalpha.to(alpha.dtype) if need[2] else None,
            )
        g = _heads(gamma, v_tilde)
        v_next = _next(v_tilde)
        grad_alpha = None
        if alpha is None:
            grad_vbar = grad
        else:
            vbar = torch.lerp(v_next, v_tilde, g)
            inv = inverse_norm(vbar)
            vhat = vbar * inv
            dot = (vhat * grad).sum(-1, keepdim=True)
            grad_vbar = (_heads(alpha, vbar) * inv) * (grad - vhat * dot)
            if ctx.needs_input_grad[2]:
                grad_alpha = dot.sum((0, 2, 3)).to(alpha.dtype)
        grad_gamma = None
        if ctx.needs_input_grad[1]:
            grad_gamma = (grad_vbar * (v_tilde - v_next)).sum((0, 2, 3)).to(gamma.dtype)
        grad_v_tilde = None
        if ctx.needs_input_grad[0]:
            previous = F.pad(grad_vbar, (0, 0, 1, 0))[:, :, :-1]  # dL/dvbar_{t-1}, 0 at t = 0
            grad_v_tilde = g * grad_vbar + (1 - g) * previous
        return grad_v_tilde, grad_gamma, grad_alpha


def peek_value(v_tilde: Tensor, gamma: Tensor, alpha: Tensor | None) -> Tensor:
    """The values of a whole sequence (module docstring); :class:`PeekValue` when gradients are
    needed, else the kernel's forward where it applies."""
    if exporting():
        return peek_value_reference(v_tilde, gamma, alpha)
    if torch.is_grad_enabled():
        return PeekValue.apply(v_tilde, gamma, alpha)
    if unit_rows.supports(v_tilde):
        return unit_rows.peek_forward(v_tilde, gamma, alpha)
    return peek_value_reference(v_tilde, gamma, alpha)
