"""``transformers`` models around the package's language models: :class:`MosaicForCausalLM` and
:class:`GPTForCausalLM` (``PreTrainedModel`` + ``GenerationMixin``).

The HF model holds the native model as ``self.model`` (weights ``model.<native name>``) and adds
what ``transformers`` expects:

* ``forward(input_ids (B, T), attention_mask (B, T), cache, use_cache, labels, logits_to_keep)``
  -> ``CausalLMOutputWithPast`` (logits (B, T or logits_to_keep, V), loss, cache). Padding, left or
  right, is never seen by a real token: rows are run on their real tokens only (grouped by span),
  and padded positions get zero logits.
* ``generate()`` through ``GenerationMixin`` with a :class:`~.cache.MosaicCache`: the first forward
  prefills the memories (left-padded prompts with an attention mask, each row on its own tokens),
  each later one feeds one token per row through the native ``step`` (the memory is the cache).
  ``use_cache=False`` recomputes the whole sequence at every token (slow; for comparison).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..models.generation import prompt_lengths
from ..models.gpt import GPTLM
from ..models.mosaic import MosaicLM
from .cache import MosaicCache
from .configuration import GPTHFConfig, MosaicHFConfig


def token_spans(attention_mask: Tensor) -> list[tuple[int, int]]:
    """Per row, the span [start, stop) of its tokens (mask 1) in a (B, T) mask; raises ValueError
    when a row's tokens are not contiguous or there are none."""
    spans = []
    for row in attention_mask.to(torch.bool).cpu():
        where = row.nonzero()[:, 0]
        if len(where) == 0 or int(where[-1] - where[0]) + 1 != len(where):
            raise ValueError("each attention_mask row must be one contiguous run of tokens (ones), padded by zeros")
        spans.append((int(where[0]), int(where[-1]) + 1))
    return spans


class _NativeCausalLM(PreTrainedModel, GenerationMixin):
    """Shared by the HF models: ``native_class`` is the package's model class."""

    native_class = MosaicLM
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.model = self.native_class(config.to_native())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own MosaicCache in its first forward

    def _init_weights(self, module) -> None:
        """Nothing: the native model initialises its weights when it is built (its reference init)."""

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """``transformers``' save, plus the remote code and its ``auto_map`` (:mod:`.remote`), so that
        ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works without this
        package. (A copy loaded as remote code saves its own files the ``transformers`` way.)"""
        super().save_pretrained(save_directory, *args, **kwargs)
        if __name__ == "memory_mosaics.hf.modeling":
            from .remote import write_remote_code

            write_remote_code(save_directory)

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value) -> None:
        self.model.wte = value

    def full_logits(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Logits (B, T, V) of every position; each row sees only its own tokens (its mask's span),
        padded positions get 0."""
        if attention_mask is None or bool(attention_mask.all()):
            return self.model(input_ids)
        spans = token_spans(attention_mask)
        logits = None
        for span in sorted(set(spans)):
            rows = torch.tensor([i for i, s in enumerate(spans) if s == span], device=input_ids.device)
            part = self.model(input_ids[rows, span[0] : span[1]])
            if logits is None:
                logits = part.new_zeros(*input_ids.shape, part.shape[-1])
            logits[rows, span[0] : span[1]] = part
        return logits

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: MosaicCache | None = None,
        use_cache: bool | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, T) -> logits (B, T, V) (the last ``logits_to_keep`` positions when > 0).

        With a ``cache`` from an earlier call, input_ids are the new tokens only. ``labels`` (B, T):
        the mean next-token cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]`` (-100 skipped).
        """
        if input_ids is None:
            raise ValueError("input_ids are required (inputs_embeds are not supported)")
        cache = cache if cache is not None else kwargs.get("past_key_values")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if isinstance(cache, MosaicCache):
            logits = cache.step(input_ids)
        elif use_cache and not self.training:
            cache = MosaicCache(self.model, input_ids, prompt_lengths(input_ids, attention_mask))
            logits = cache.last_logits[:, None] if logits_to_keep == 1 else self.full_logits(input_ids, attention_mask)
        else:
            cache = None
            logits = self.full_logits(input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = self.model.loss(logits[:, :-1], labels[:, 1:])
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)


class MosaicForCausalLM(_NativeCausalLM):
    """A :class:`~memory_mosaics.MosaicLM` (v1 or v2) for ``transformers``."""

    config_class = MosaicHFConfig
    native_class = MosaicLM


class GPTForCausalLM(_NativeCausalLM):
    """The GPT-2 baseline :class:`~memory_mosaics.GPTLM` for ``transformers``."""

    config_class = GPTHFConfig
    native_class = GPTLM


HF_MODELS = {cls.config_class.model_type: cls for cls in (MosaicForCausalLM, GPTForCausalLM)}

if __name__ == "memory_mosaics.hf.modeling":  # the package, not a trust_remote_code copy of it
    for _config, _model in ((c.config_class, c) for c in HF_MODELS.values()):
        AutoModel.register(_config, _model, exist_ok=True)
        AutoModelForCausalLM.register(_config, _model, exist_ok=True)
