"""What every language model of the project shares: config (de)serialisation, input checks,
the loss, weight-decay groups, safetensors save/load and sampling-based generation.

A subclass provides ``config_class``, ``blocks``, ``_embed`` (ids -> first block's input),
``_logits`` (last block's output -> logits), and for decoding:

* ``prefill(idx)`` -> (logits of the last position (B, V), decoding state);
* ``step(idx_t (B, 1), state)`` -> logits (B, V), updating the state in place.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor

from ..common import reserve
from ..io import atomic_write, atomic_write_text
from .generation import RaggedPrefill, Sampling, StopStrings, prompt_lengths

RESERVED_NEW_TOKENS = 8192  # generate preallocates its caches for at most this many new tokens

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
IGNORE_INDEX = -100


@dataclasses.dataclass
class ModelConfig:
    """Base of the language-model configs: the sizes every kind has (defaults: GPT-2 small),
    validation helpers and a JSON round trip."""

    model_type = "base"

    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.05  # on each residual branch's output

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        kind = d.pop("model_type", cls.model_type)
        if kind != cls.model_type:
            raise ValueError(f"config is for model_type {kind!r}, not {cls.model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_training(cls, train: Any, vocab_size: int) -> "ModelConfig":
        """The config of a model trained with ``train`` (a ``TrainConfig``) on ``vocab_size`` ids:
        the shared sizes, then the kind's own fields (:meth:`training_fields`), then ``train.model_args``."""
        shared = {
            "vocab_size": vocab_size,
            "n_layer": train.n_layer,
            "n_head": train.n_head,
            "n_embd": train.n_embd,
            "dropout": train.dropout,
        }
        return cls.from_dict({**shared, **cls.training_fields(train), **train.model_args})

    @classmethod
    def training_fields(cls, train: Any) -> dict[str, Any]:
        """Fields this kind derives from the training settings (none by default)."""
        return {}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def _check_heads(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def _check_probability(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class LanguageModel(nn.Module, abc.ABC):
    """Shared behaviour of :class:`MosaicLM` and :class:`GPTLM`."""

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    # ------------------------------------------------------------------ inputs and loss
    def check_tokens(self, idx: Tensor) -> None:
        """Raise ValueError unless idx is a non-empty (B, T) integer tensor of ids in [0, vocab)."""
        if not isinstance(idx, Tensor):
            raise ValueError(f"token ids must be a torch.Tensor, got {type(idx).__name__}")
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"token ids must be an integer tensor, got dtype {idx.dtype}")
        if idx.dim() != 2:
            raise ValueError(f"token ids must have shape (batch, time), got {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError(f"token ids must be non-empty, got shape {tuple(idx.shape)}")
        if torch.compiler.is_compiling():  # the range check would force a device sync / graph break
            return
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside [0, {self.config.vocab_size})")

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy; targets (B, T), IGNORE_INDEX (-100) positions skipped."""
        if targets.shape != logits.shape[:2]:
            raise ValueError(f"targets shape {tuple(targets.shape)} != inputs shape {tuple(logits.shape[:2])}")
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long(), ignore_index=IGNORE_INDEX)

    # ------------------------------------------------------------------ forward
    @abc.abstractmethod
    def _embed(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) -> input of the first block (B, T, d)."""

    @abc.abstractmethod
    def _logits(self, x: Tensor) -> Tensor:
        """Output of the last block (..., d) -> logits (..., V)."""

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        """idx (B, T) -> logits (B, T, V); with targets (B, T), (logits, mean cross-entropy)."""
        self.check_tokens(idx)
        x = self._embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self._logits(x)
        return logits if targets is None else (logits, self.loss(logits, targets))

    # ------------------------------------------------------------------ parameters
    def num_params(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups of the reference: decay on tensors with >= 2 dims, none on scalars/norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def diagnostics(self, idx: Tensor) -> dict[str, float]:
        """Scalars worth following during training (bandwidths, decays, retrieval sharpness) on a
        batch ``idx`` (B, T); none by default."""
        return {}

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / WEIGHTS_NAME, lambda tmp: save_model(self, tmp))
        atomic_write_text(d / CONFIG_NAME, self.config.to_json())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> "LanguageModel":
        """Load a model written by :meth:`save_pretrained` (safetensors only; nothing is unpickled)."""
        d = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise ValueError(f"{d} is not a saved model: {name} is missing")
        model = cls(cls.config_class.from_json((d / CONFIG_NAME).read_text()))
        load_model(model, d / WEIGHTS_NAME, device=map_location)
        return model

    # ------------------------------------------------------------------ decoding
    @abc.abstractmethod
    def prefill(self, idx: Tensor) -> tuple[Tensor, Any]:
        """Run the prompt idx (B, T); return the last position's logits (B, V) and the decoding state."""

    @abc.abstractmethod
    def step(self, idx: Tensor, state: Any) -> Tensor:
        """Feed one token per row, idx (B, 1); update ``state`` in place; return logits (B, V)."""

    @torch.no_grad()
    def iter_generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token: int | None = None,
        generator: torch.Generator | None = None,
        *,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        attention_mask: Tensor | None = None,
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        pad_token: int | None = None,
        compile: bool = False,
    ) -> Iterator[Tensor]:
        """Yield new tokens (B, 1) one at a time (streaming). temperature 0 means greedy;
        top_k, top_p and repetition_penalty as :class:`~.generation.Sampling`.

        ``attention_mask`` (B, T): prompts of different lengths, left-padded (0 = padding); each row
        then gets the tokens it gets alone. A row is finished once it has produced ``eos_token`` or
        its generated text (``decode``: ids -> text) contains one of ``stop_strings``; from then on
        it produces ``pad_token`` (default: ``eos_token``, else 0), and iteration stops when every
        row is finished.

        The caches are preallocated to the prompt plus ``max_new_tokens`` (:func:`~..common.reserve`;
        at most :data:`RESERVED_NEW_TOKENS` new tokens: a larger budget, which a generation stopped
        at ``eos_token`` may never use, grows the caches as it goes).
        ``compile``: run each decoding step through ``torch.compile`` (dynamic shapes: one
        compilation serves every cache length; worth its compilation time on long generations,
        ``docs/benchmarks.md``). For a Memory Mosaic on the CPU in fp32 or fp64 the eager step runs
        the memory-step kernels (:mod:`..ops.memory_step`), which a compiled step does not; the two
        measured close, either way round (rounds 5 and 6), and compiling costs 16-41 s.
        """
        self.check_tokens(idx)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
        if stop_strings and decode is None:
            raise ValueError("stop_strings need decode (ids -> text), e.g. the tokenizer's decode")
        lengths = prompt_lengths(idx, attention_mask)
        if pad_token is None:
            pad_token = 0 if eos_token is None else eos_token
        B, T = idx.shape
        seen = None
        if repetition_penalty is not None:
            real = torch.arange(T, device=idx.device)[None, :] >= (T - lengths.to(idx.device))[:, None]
            seen = torch.zeros(B, self.config.vocab_size, dtype=torch.bool, device=idx.device)
            seen[real.nonzero()[:, 0], idx[real].long()] = True
        stops = StopStrings(stop_strings, decode, B) if stop_strings else None
        was_training = self.training
        self.eval()
        try:
            step = torch.compile(self.step, dynamic=True) if compile else None
            with reserve(T + min(max_new_tokens, RESERVED_NEW_TOKENS)):
                state = RaggedPrefill(self, idx.long(), lengths, step)
            logits = state.logits
            finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
            for i in range(max_new_tokens):
                nxt = sampling.next_token(logits, seen, generator)
                nxt = torch.where(finished, torch.full_like(nxt, pad_token), nxt)
                if eos_token is not None:
                    finished |= nxt == eos_token
                if stops is not None:
                    finished |= stops.update(nxt)
                if seen is not None:
                    seen[torch.arange(B, device=idx.device), nxt] = True
                yield nxt[:, None]
                if bool(finished.all()) or i == max_new_tokens - 1:
                    break
                logits = state.step(nxt[:, None])
        finally:
            self.train(was_training)

    def generate(self, idx: Tensor, max_new_tokens: int, **sampling) -> Tensor:
        """Continue idx (B, T) by up to max_new_tokens tokens; returns (B, T + n). ``sampling``:
        :meth:`iter_generate`'s options (temperature, top_k, top_p, repetition_penalty, eos_token,
        generator, attention_mask, stop_strings and decode, pad_token, compile)."""
        new = list(self.iter_generate(idx, max_new_tokens, **sampling))
        return torch.cat([idx.long(), *new], dim=1)
