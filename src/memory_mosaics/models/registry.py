"""The one table of model kinds: ``model_type -> (config class, model class)``.

Loading (:func:`load_pretrained`), training (``TrainConfig.model``), the experiments and the command
line all resolve a kind here. A new model registers itself with :func:`register`; its config class
builds itself from training settings with ``from_training``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import CONFIG_NAME, LanguageModel, ModelConfig
from .gpt import GPTLM, GPTConfig
from .mosaic import MosaicConfig, MosaicLM

REGISTRY: dict[str, tuple[type[ModelConfig], type[LanguageModel]]] = {}


def register(config_class: type[ModelConfig], model_class: type[LanguageModel]) -> None:
    """Add a kind under ``config_class.model_type``."""
    REGISTRY[config_class.model_type] = (config_class, model_class)


def model_kinds() -> tuple[str, ...]:
    return tuple(REGISTRY)


def lookup(kind: str) -> tuple[type[ModelConfig], type[LanguageModel]]:
    """(config class, model class) of ``kind``; a clear error for an unknown one."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(REGISTRY)}")
    return REGISTRY[kind]


def load_pretrained(directory: str | os.PathLike) -> LanguageModel:
    """Load any saved model, choosing the class from ``config.json``'s ``model_type``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{directory} is not a saved model: {CONFIG_NAME} is missing")
    kind = json.loads(path.read_text()).get("model_type")
    if kind not in REGISTRY:
        raise ValueError(f"unknown model_type {kind!r} in {path}")
    return REGISTRY[kind][1].from_pretrained(directory)


register(MosaicConfig, MosaicLM)
register(GPTConfig, GPTLM)
