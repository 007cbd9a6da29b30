"""Contextual memory (C-mem, spec section 2): a feature extractor plus an associative memory that
fills up with (key, value) pairs during inference.

    y_t = W_o concat_h sum_{s: min_lag <= t-s <= max_lag} softmax_s(beta_h(n_t) k_t . k_s) v_s

``k`` comes from a key extractor (leaky average for language), normalised to unit length when
``normalize_keys``; ``v`` from a value extractor with a one-step peek; ``beta`` from a bandwidth
module; ``W_o`` is the combining projection (``c_proj``). With ``min_lag = 1`` and no window this
is the memory of the Memory Mosaics paper; v2's short- and long-term memories set the lags.

Decoding: the memory IS the cache. :meth:`prefill` returns a :class:`ContextualState` holding the
stored pairs, the key extractor's state, and the newest key and ``v~`` whose value is completed by
:meth:`step` when the next input arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..common import GrowingBuffer, frozen, merge_heads, split_heads
from ..ops import memory_step
from ..ops.retrieval import causal_retrieval, causal_retrieval_weights, memory_readout
from ..ops.unit_rows import unit_keys
from .extractors import LeakyAverageKey, LinearKey, PeekValue, step_decay


@dataclass
class ContextualState:
    """Decoding state of one contextual memory (batch B, heads H).

    keys / values: stored pairs (B, H, n, Dh); pending_key (B, H, 1, Dh) and pending_value
    (v~, B, H, 1, Dh) of the newest input; key_state: key-extractor state (B, H, Dh) or None;
    t: number of inputs seen.
    """

    keys: GrowingBuffer
    values: GrowingBuffer
    pending_key: Tensor
    pending_value: Tensor
    key_state: Tensor | None
    t: int


class ContextualMemory(nn.Module):
    """Multi-head contextual memory.

    Args:
        key: key extractor, ``(x, state) -> (kbar (B, H, T, Dh), state)``.
        value: :class:`PeekValue`.
        bandwidth: ``n (T,) -> beta (1 or H, T)``.
        proj: combining projection W_o, (B, T, H * Dh) -> (B, T, d_out).
        normalize_keys: unit-normalise keys (language models) or not (three moons).
        min_lag, max_lag: which stored pairs a query may read (see :mod:`..ops.retrieval`).
        attn_dropout: dropout on the retrieval weights; resid_dropout: on the output.
    """

    def __init__(
        self,
        key: nn.Module,
        value: PeekValue,
        bandwidth: nn.Module,
        proj: nn.Module,
        normalize_keys: bool = True,
        min_lag: int = 1,
        max_lag: int | None = None,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
    ):
        super().__init__()
        self.key, self.value, self.bandwidth, self.c_proj = key, value, bandwidth, proj
        self.normalize_keys = normalize_keys
        self.min_lag, self.max_lag = min_lag, max_lag
        self.attn_dropout = attn_dropout
        self.resid_dropout = nn.Dropout(resid_dropout)

    def visible_pairs(self, t: Tensor, min_lag: int | Tensor | None = None) -> Tensor:
        """Number of stored pairs the query at (0-based) time t may read: (T,) -> (T,)."""
        hi = t - (self.min_lag if min_lag is None else min_lag) + 1
        lo = torch.zeros_like(t) if self.max_lag is None else (t - self.max_lag).clamp(min=0)
        return (hi - lo).clamp(min=0)

    def _keys_and_queries(
        self, x: Tensor, start: int, state: Tensor | None, min_lag: int | Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Keys k_t (unit norm if normalize_keys) and queries q_t = beta(n_t) k_t, both (B, H, T, Dh),
        for the inputs x (B, T, d_in) at times start .. start + T - 1."""
        kbar, key_state = self.key(x, state)
        n = None  # a bandwidth that ignores the number of visible pairs gives one beta per head
        if self.bandwidth.depends_on_count:
            n = self.visible_pairs(torch.arange(start, start + x.shape[1], device=x.device), min_lag)
        beta = self.bandwidth(n).to(kbar.dtype)[None, :, :, None]  # (1, 1|H, T|1, 1)
        if not self.normalize_keys:
            return kbar, kbar * beta, key_state
        k, q = unit_keys(kbar, beta)
        return k, q, key_state

    def _retrieve(
        self, x: Tensor, min_lag: int | Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        min_lag = self.min_lag if min_lag is None else min_lag
        k, q, key_state = self._keys_and_queries(x, 0, None, min_lag)
        v, v_tilde = self.value(x)
        p = self.attn_dropout if self.training else 0.0
        y = causal_retrieval(q, k, v, min_lag, self.max_lag, dropout_p=p)
        return y, k, v, v_tilde, key_state

    def _output(self, y: Tensor) -> Tensor:
        return self.resid_dropout(self.c_proj(merge_heads(y)))

    def forward(self, x: Tensor, min_lag: int | Tensor | None = None) -> Tensor:
        """x (B, T, d_in) -> (B, T, d_out). The output at t uses inputs up to t only; ``min_lag``
        overrides the memory's own for this call (v2's long-term memory draws it in training; a
        0-d tensor under ``torch.compile``)."""
        return self._output(self._retrieve(x, min_lag)[0])

    def attention(self, x: Tensor) -> Tensor:
        """Retrieval weights (B, H, T, T) for inspection: row t is the distribution over pairs s."""
        k, q, _ = self._keys_and_queries(x, 0, None)
        return causal_retrieval_weights(q, k, self.min_lag, self.max_lag)

    @torch.no_grad()
    def prefill(self, x: Tensor) -> tuple[Tensor, ContextualState]:
        """Full forward over a prompt x (B, T, d_in), returning the output and the decoding state."""
        y, k, v, v_tilde, key_state = self._retrieve(x)
        state = ContextualState(
            keys=GrowingBuffer(k[:, :, :-1]),
            values=GrowingBuffer(v[:, :, :-1]),
            pending_key=k[:, :, -1:],
            pending_value=v_tilde[:, :, -1:],
            key_state=key_state,
            t=x.shape[1],
        )
        return self._output(y), state

    @torch.no_grad()
    def step(self, x: Tensor, state: ContextualState) -> Tensor:
        """One new input x (B, 1, d_in): complete and store the previous pair, then answer.

        Updates ``state`` in place and returns the output (B, 1, d_out). On the CPU with a per-head
        decay (or none), all but the projections is :func:`..ops.memory_step.memory_step` (C
        kernels); otherwise the torch operations below (the same formulas)."""
        t = state.t
        stop = t - self.min_lag + 1
        start = 0 if self.max_lag is None else max(0, t - self.max_lag)
        if memory_step.supports(x) and isinstance(self.key, (LeakyAverageKey, LinearKey)):
            return self._kernel_step(x, state, start, stop)
        k, q, state.key_state = self._keys_and_queries(x, t, state.key_state)
        v_tilde = self.value.project(x)
        state.keys.append(state.pending_key)
        state.values.append(self.value.mix(state.pending_value, v_tilde))  # v_{t-1} peeks at x_t
        state.pending_key, state.pending_value = k, v_tilde
        y = memory_readout(q, state.keys.view(start, max(start, stop)), state.values.view(start, max(start, stop)))
        state.t = t + 1
        return self._output(y)

    def _step_scalars(self, t: int) -> Tensor:
        """Per-head scalars of the step at time t, (4, H): lambda_h, beta_h, gamma_h and the values'
        alpha_h (1 without normalisation)."""

        def compute() -> Tensor:
            H = self.value.n_head
            n = self.visible_pairs(torch.tensor([t])) if self.bandwidth.depends_on_count else None
            alpha = self.value.alpha()
            return torch.stack(
                [
                    step_decay(self.key, H),
                    self.bandwidth(n).expand(H, 1)[:, 0],
                    self.value.gamma,
                    torch.ones(H) if alpha is None else alpha,
                ]
            )

        if self.bandwidth.depends_on_count:  # beta changes with the number of pairs
            return compute()
        return frozen(self, "step_scalars", compute, also=(self.key, self.value, self.bandwidth))

    def _kernel_step(self, x: Tensor, state: ContextualState, start: int, stop: int) -> Tensor:
        H = self.value.n_head
        decay, beta, gamma, alpha = self._step_scalars(state.t)
        leaky = isinstance(self.key, LeakyAverageKey)  # else LinearKey: no state
        phi = split_heads(self.key.proj(x), H)
        v_tilde = self.value.project(x)
        slot = state.keys.claim()
        state.values.claim()
        value_alpha = alpha if self.value.normalize else None
        store = memory_step.Store(slot, v_tilde, state.pending_key, state.pending_value, gamma, value_alpha)
        y, kbar, k = memory_step.memory_step(
            phi,
            state.key_state[:, :, None] if leaky and state.key_state is not None else None,
            decay,
            beta,
            state.keys.storage,
            state.values.storage,
            start,
            min(stop, slot + 1),
            normalize=self.normalize_keys,
            store=store,
        )
        state.key_state = kbar[:, :, 0] if leaky else None
        state.pending_key, state.pending_value = k, v_tilde
        state.t += 1
        return self._output(y)
