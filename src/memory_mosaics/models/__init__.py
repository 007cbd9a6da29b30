"""Language models: the Memory Mosaic (v1, with v2 switches) and the GPT-2 baseline."""

from .base import LanguageModel, ModelConfig
from .gpt import GPTConfig, GPTLM
from .mosaic import MosaicConfig, MosaicLM

__all__ = ["LanguageModel", "ModelConfig", "GPTConfig", "GPTLM", "MosaicConfig", "MosaicLM", "load_pretrained"]


def load_pretrained(directory) -> LanguageModel:
    """Load any saved model, choosing the class from ``config.json``'s ``model_type``."""
    import json
    from pathlib import Path

    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory} is not a saved model: config.json is missing")
    kind = json.loads(path.read_text()).get("model_type")
    classes = {"mosaic": MosaicLM, "gpt": GPTLM}
    if kind not in classes:
        raise ValueError(f"unknown model_type {kind!r} in {path}")
    return classes[kind].from_pretrained(directory)
