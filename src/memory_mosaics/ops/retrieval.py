"""Strictly causal kernel-regression retrieval from a contextual memory (spec sections 1-2).

A contextual memory answers the query ``q_t`` with the pairs ``(k_s, v_s)`` stored at least
``min_lag`` steps earlier (and, with a window, at most ``max_lag`` steps earlier):

    y_t = sum_{s : min_lag <= t - s <= max_lag} softmax_s(q_t . k_s) * v_s ,   y_t = 0 if no pair

The bandwidth is folded into the query by the caller (``q_t = beta_t * k_t``). ``min_lag = 1`` is
the Memory Mosaic memory (pairs strictly before t); v2's long-term memory uses ``min_lag = m``
and its short-term memory ``max_lag = h - 1``.

Shapes: ``q``, ``k`` (B, H, T, Dk); ``v`` (B, H, T, Dv); returns (B, H, T, Dv).

* :func:`causal_retrieval_reference` builds the (T, T) score matrix and mask literally
  (:func:`causal_retrieval_weights`, also used to inspect what a memory reads).
* :func:`causal_retrieval` uses the shift trick: queries ``q[min_lag:]`` against pairs
  ``k[:-min_lag], v[:-min_lag]`` under an ordinary causal mask, so that
  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels) applies;
  the first ``min_lag`` outputs are zero. A finite ``max_lag`` adds a band mask, or, once the
  sequence holds more than 4 blocks of the window, the O(T w) blocked path of :mod:`.banded`. On the CPU in
  float32 with head sizes <= 8 and no dropout it calls the compiled kernel of :mod:`.small_head`
  instead (same function, faster there: ``docs/benchmarks.md``). On the CPU in bfloat16, short
  sequences (and any with retrieval dropout up to 2048 steps), and in float32 with retrieval
  dropout, take :func:`plain_retrieval`, the three-op form with the weights materialised and a
  cheap dropout mask, which beats SDPA's CPU kernels there (:func:`plain_is_faster`). While ``torch.export`` traces, the
  SDPA path uses the full (T, T) mask of allowed pairs instead of the shift, so that no branch
  depends on the (symbolic) sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common import exporting
from . import banded, dropout_mask, small_head


def _check_lags(min_lag: int, max_lag: int | None) -> None:
    if min_lag < 1:
        raise ValueError(f"min_lag must be >= 1 (a memory never reads the pair of the present), got {min_lag}")
    if max_lag is not None and max_lag < min_lag:
        raise ValueError(f"max_lag ({max_lag}) must be >= min_lag ({min_lag})")


def _allowed(T: int, min_lag: int | Tensor, max_lag: int | None, device: torch.device) -> Tensor:
    """(T, T) boolean: query t may read pair s iff min_lag <= t - s <= max_lag."""
    lag = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]
    allowed = lag >= min_lag
    if max_lag is not None:
        allowed = allowed & (lag <= max_lag)  # not in place: decompositions must be functional
    return allowed


def causal_retrieval_weights(q: Tensor, k: Tensor, min_lag: int = 1, max_lag: int | None = None) -> Tensor:
    """Retrieval weights (B, H, T, T): row t is softmax_s(q_t . k_s) over the allowed s (0 if none)."""
    _check_lags(min_lag, max_lag)
    allowed = _allowed(q.shape[2], min_lag, max_lag, q.device)
    scores = (q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no pair -> 0


def causal_retrieval_reference(q: Tensor, k: Tensor, v: Tensor, min_lag: int = 1, max_lag: int | None = None) -> Tensor:
    """Literal formula: the (T, T) weights of :func:`causal_retrieval_weights` times v."""
    return causal_retrieval_weights(q, k, min_lag, max_lag) @ v


PLAIN_CAUSAL_MAX = {False: 512, True: 2048}  # bf16: longest shifted sequence read plainly, without/with dropout


def plain_is_faster(q: Tensor, causal: bool, dropout_p: float) -> bool:
    """Whether :func:`plain_retrieval` beats SDPA for these queries (the CPU only).

    * bfloat16: measured slower through SDPA than through the plain form's bf16 matrix products
      (that SDPA's CPU kernels have no bf16 fast path is a hypothesis, not traced). Unmasked reads
      (the persistent memory, one decoding step) always; causal reads up to ``PLAIN_CAUSAL_MAX``
      steps, beyond which SDPA's blocked kernel wins without dropout and the (T, T) weights grow.
    * float32 with dropout, where the counter-based mask of :mod:`.dropout_mask` is built (20x
      cheaper to draw than ``bernoulli_``, measured): unmasked reads, and causal ones up to 512 steps.
    * otherwise (float32 without dropout, float64): SDPA.

    Measured with ``benchmarks/bench_readout.py`` on a 2-core AMD EPYC (``docs/benchmarks.md``).
    """
    if q.dtype == torch.float32 and dropout_p == 0.0 or q.device.type != "cpu":  # the commonest case first
        return False
    if q.dtype == torch.bfloat16:
        return not causal or q.shape[2] <= PLAIN_CAUSAL_MAX[dropout_p > 0]
    if q.dtype == torch.float32 and dropout_p > 0 and dropout_mask.available():
        return not causal or q.shape[2] <= PLAIN_CAUSAL_MAX[False]
    return False


def plain_retrieval(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """``dropout(softmax(q k^T)) v`` by three plain ops, in the queries' dtype (autocast off: the
    weights are formed and read in bf16, as SDPA does); ``causal``: query i reads pairs j <= i.

    q (..., Tq, Dk); k (..., N, Dk); v (..., N, Dv), broadcastable leading dims -> (..., Tq, Dv).
    """
    with torch.autocast(q.device.type, enabled=False):
        scores = q @ k.to(q.dtype).transpose(-1, -2)
        if causal:
            n = q.shape[-2]
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        return _dropout(torch.softmax(scores, dim=-1), dropout_p) @ v.to(q.dtype)


def _dropout(weights: Tensor, p: float) -> Tensor:
    """Inverted dropout on retrieval weights: times the counter-based mask of :mod:`.dropout_mask`
    where it is built (the CPU: 20x cheaper to draw than ``F.dropout``'s), else ``F.dropout``."""
    if p > 0.0 and dropout_mask.supports(weights):
        return weights * dropout_mask.dropout_mask(weights.shape, p, weights.dtype)
    return F.dropout(weights, p)


def causal_retrieval(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    min_lag: int | Tensor = 1,
    max_lag: int | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Fast retrieval: the small-head kernel where it applies, else SDPA with the shift trick.

    ``min_lag`` may be a 0-d integer tensor (v2's long-term skip drawn inside a compiled graph):
    the shift then has no static size and the retrieval runs under the (T, T) mask of allowed pairs.
    """
    if isinstance(min_lag, Tensor):
        return _masked_retrieval(q, k, v, min_lag, max_lag, dropout_p)
    _check_lags(min_lag, max_lag)
    if dropout_p == 0.0 and small_head.supports(q, k, v):
        return small_head.small_head_retrieval(q, k, v, min_lag, max_lag)
    if exporting():
        return _masked_retrieval(q, k, v, min_lag, max_lag)
    B, H, T, _ = q.shape
    if T <= min_lag:
        return v.new_zeros(B, H, T, v.shape[-1])
    qs, ks, vs = q[:, :, min_lag:], k[:, :, :-min_lag], v[:, :, :-min_lag]
    if (max_lag is None or max_lag >= T - 1) and plain_is_faster(qs, True, dropout_p):
        out = plain_retrieval(qs, ks, vs, True, dropout_p)
    elif max_lag is None or max_lag >= T - 1:
        out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout_p, is_causal=True, scale=1.0)
    elif T - min_lag > 4 * banded.block_size(max_lag - min_lag + 1):
        return banded.banded_retrieval(q, k, v, min_lag, max_lag, dropout_p)  # O(T w), no (T, T) mask
    else:
        # after the shift, query i (time i + min_lag) may read pair j iff 0 <= i - j <= max_lag - min_lag
        n = T - min_lag
        d = torch.arange(n, device=q.device)[:, None] - torch.arange(n, device=q.device)[None, :]
        band = (d >= 0) & (d <= max_lag - min_lag)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band, dropout_p=dropout_p, scale=1.0)
    return F.pad(out, (0, 0, min_lag, 0))  # the first min_lag queries see no pair: output 0


def _masked_retrieval(
    q: Tensor, k: Tensor, v: Tensor, min_lag: int | Tensor, max_lag: int | None, dropout_p: float = 0.0
) -> Tensor:
    """Equation 2 by SDPA over the full (T, T) mask of allowed pairs: no branch on T (export) or on
    a tensor ``min_lag``."""
    allowed = _allowed(q.shape[2], min_lag, max_lag, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=1.0)
    return torch.where(allowed.any(-1)[:, None], out, 0.0)  # a query with no pair outputs 0


def memory_readout(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """Unmasked retrieval from a fixed set of pairs (persistent memory, or one decoding step).

    q (B, H, Tq, Dk); k (B or 1, H, N, Dk); v (B or 1, H, N, Dv) -> (B, H, Tq, Dv).
    An empty memory (N = 0) answers zero. Pairs shared by the batch (k, v of batch 1: the P-mem's
    bank) are read with the batch folded into the query axis, one read over B Tq queries: the bank
    is not expanded and its gradient is summed inside the kernel (fwd+bwd 1.04-1.55x faster on an H200,
    as fast on the CPU: docs/benchmarks.md). The read is SDPA, or :func:`plain_retrieval` where
    :func:`plain_is_faster` (the CPU in bfloat16).
    """
    if k.shape[2] == 0:
        return q.new_zeros(*q.shape[:-1], v.shape[-1])
    read = plain_retrieval if plain_is_faster(q, False, dropout_p) else _sdpa
    B, H, Tq, Dk = q.shape
    if k.shape[0] == 1 and B > 1:
        y = read(q.transpose(0, 1).reshape(1, H, B * Tq, Dk), k, v, dropout_p=dropout_p)
        return y.view(H, B, Tq, -1).transpose(0, 1)
    k, v = k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])
    return read(q, k, v, dropout_p=dropout_p)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=1.0)
