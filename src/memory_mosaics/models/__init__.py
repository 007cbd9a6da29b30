"""Language models: the Memory Mosaic (v1, with v2 switches) and the GPT-2 baseline, and the
registry of model kinds."""

from .base import LanguageModel, ModelConfig
from .gpt import GPTLM, GPTConfig
from .mosaic import MosaicConfig, MosaicLM
from .registry import load_pretrained, lookup, model_kinds, register

__all__ = [
    "LanguageModel",
    "ModelConfig",
    "GPTConfig",
    "GPTLM",
    "MosaicConfig",
    "MosaicLM",
    "load_pretrained",
    "lookup",
    "model_kinds",
    "register",
]
