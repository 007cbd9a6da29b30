"""Hugging Face configs of the package's model kinds: :class:`MosaicHFConfig` (``model_type
"mosaic"``, v1 and v2 switches) and :class:`GPTHFConfig` (``"gpt"``, the GPT-2 baseline).

Each HF config carries exactly the fields of the package's config dataclass (read from it, so a new
switch of ``MosaicConfig`` appears here without an edit), plus what ``transformers`` adds
(``architectures``, ``auto_map``, token ids, ...). :meth:`to_native` gives back the package config
(validated by it); :func:`hf_config` builds the HF config of a package config.
"""

from __future__ import annotations

import dataclasses
import typing

from transformers import AutoConfig, PretrainedConfig

from ..models.gpt import GPTConfig
from ..models.mosaic import MosaicConfig

# transformers' generic names for the sizes (``config.hidden_size`` etc.), used by its utilities
ATTRIBUTE_MAP = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}


class _NativeFields(PretrainedConfig):
    """Base of the HF configs: ``native_class`` is the package's config dataclass."""

    native_class = MosaicConfig  # not a field: no annotation
    attribute_map = ATTRIBUTE_MAP

    def to_native(self):
        """The package config (checked by its own ``__post_init__``)."""
        names = [f.name for f in dataclasses.fields(self.native_class)]
        return self.native_class(**{n: getattr(self, n) for n in names})


def _with_native_fields(name: str, native: type, doc: str) -> type:
    """An HF config class with one field per field of ``native`` (same names and defaults)."""
    hints = typing.get_type_hints(native)
    namespace = {
        "__doc__": doc,
        "__module__": __name__,
        "model_type": native.model_type,
        "native_class": native,
        "__annotations__": {},
    }
    for field in dataclasses.fields(native):
        namespace["__annotations__"][field.name] = hints[field.name]
        namespace[field.name] = field.default
    namespace["__annotations__"]["use_cache"] = bool  # generate() decodes with the memories as cache
    namespace["use_cache"] = True
    return type(name, (_NativeFields,), namespace)


MosaicHFConfig = _with_native_fields(
    "MosaicHFConfig", MosaicConfig, "Hugging Face config of a :class:`~memory_mosaics.MosaicLM` (v1 and v2)."
)
GPTHFConfig = _with_native_fields(
    "GPTHFConfig", GPTConfig, "Hugging Face config of a :class:`~memory_mosaics.GPTLM` (the GPT-2 baseline)."
)
HF_CONFIGS = {cls.model_type: cls for cls in (MosaicHFConfig, GPTHFConfig)}


def hf_config(native, **extra) -> PretrainedConfig:
    """The HF config of a package config (``MosaicConfig`` or ``GPTConfig``); ``extra``: HF fields
    such as ``eos_token_id``."""
    if native.model_type not in HF_CONFIGS:
        raise ValueError(f"no Hugging Face config for model_type {native.model_type!r}")
    fields = {f.name: getattr(native, f.name) for f in dataclasses.fields(native)}
    return HF_CONFIGS[native.model_type](**fields, **extra)


if __name__ == "memory_mosaics.hf.configuration":  # the package, not a trust_remote_code copy of it
    for _kind, _config in HF_CONFIGS.items():
        AutoConfig.register(_kind, _config, exist_ok=True)
