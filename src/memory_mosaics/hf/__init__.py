"""Hugging Face integration (the ``hf`` extra: ``pip install 'memory-mosaics[hf]'``).

``import memory_mosaics`` registers the package's configs and models with ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM`` as soon as ``transformers`` is imported (before or after;
:mod:`.hook`), so ``AutoModelForCausalLM.from_pretrained(folder)`` loads a saved model. Modules:

* :mod:`.configuration`: ``MosaicHFConfig``, ``GPTHFConfig`` (the package configs' fields);
* :mod:`.modeling`: ``MosaicForCausalLM``, ``GPTForCausalLM`` (``PreTrainedModel`` + ``GenerationMixin``);
* :mod:`.cache`: ``MosaicCache``, the memories' stored pairs as ``generate``'s cache;
* :mod:`.hook`: the registration on import; :mod:`.convert`: package checkpoint <-> HF folder (with the
  tokenizer and, for ``trust_remote_code``, the modeling code: :mod:`.remote`); :mod:`.hub`: the Hub;
* :mod:`.harness`: the ``lm-evaluation-harness`` model ``mosaics``.

Names are loaded lazily (``memory_mosaics.hf.MosaicForCausalLM``), so importing this package does not
import ``transformers``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MosaicHFConfig": "configuration",
    "GPTHFConfig": "configuration",
    "hf_config": "configuration",
    "MosaicForCausalLM": "modeling",
    "GPTForCausalLM": "modeling",
    "MosaicCache": "cache",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
