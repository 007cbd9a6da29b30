"""Memory Mosaics: networks of associative memories (Zhang et al., ICLR 2025; v2, NeurIPS 2025)."""

from .hf.hook import install as _install_transformers_registration
from .models import GPTLM, GPTConfig, MosaicConfig, MosaicLM, load_pretrained

__all__ = ["GPTConfig", "GPTLM", "MosaicConfig", "MosaicLM", "load_pretrained"]
__version__ = "0.1.0"

_install_transformers_registration()  # Auto* classes, once transformers is imported (memory_mosaics.hf)
