"""Registration of the package's model kinds with ``transformers``' Auto classes."""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memory_mosaics.hf needs transformers; install the extra: pip install 'memory-mosaics[hf]'"
    ) from None

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import HF_CONFIGS
from .modeling import HF_MODELS


def register() -> None:
    """Register every kind (``"mosaic"``, ``"gpt"``) with AutoConfig, AutoModel and
    AutoModelForCausalLM (idempotent)."""
    for kind, config_class in HF_CONFIGS.items():
        AutoConfig.register(kind, config_class, exist_ok=True)
        AutoModel.register(config_class, HF_MODELS[kind], exist_ok=True)
        AutoModelForCausalLM.register(config_class, HF_MODELS[kind], exist_ok=True)


register()
