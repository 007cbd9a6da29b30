"""Package checkpoints <-> Hugging Face folders.

A package checkpoint is ``config.json`` (the package config) + ``model.safetensors`` (native
names) + ``tokenizer.json``. An HF folder is what ``save_pretrained`` of :mod:`.modeling` writes:
``config.json`` (the HF config: the same fields, ``architectures``, ``auto_map``, token ids),
``model.safetensors`` (names prefixed ``model.``), ``generation_config.json``, the remote code
(:mod:`.remote`) and the tokenizer (the GPT-2 ranks file copied in; a BPE tokenizer also for
``AutoTokenizer``). Both ways keep the weights
bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.corpus import EOT
from ..data.tokenizers import SPEC_FILE, BPETokenizer, load_tokenizer
from ..models.registry import load_pretrained
from .configuration import hf_config
from .modeling import HF_MODELS


def _copy_tokenizer(source: Path, target: Path):
    """Save ``source``'s tokenizer into ``target`` (if it has one); returns it or None."""
    if not (source / SPEC_FILE).is_file():
        return None
    tokenizer = load_tokenizer(source)
    tokenizer.save(target)
    return tokenizer


def write_hf_tokenizer(folder: Path, tokenizer) -> None:
    """Make a BPE ``tokenizer.json`` in ``folder`` loadable by ``AutoTokenizer`` as well (adds
    ``tokenizer_config.json``; the end-of-text token is eos, bos and pad). Ids are unchanged, except
    that ``AutoTokenizer`` encodes the text ``<|endoftext|>`` as the special id, where the package's
    tokenizer encodes it literally. GPT-2 tokenizers (tiktoken ranks) are left as they are."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, BPETokenizer):
        return
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / SPEC_FILE), eos_token=EOT, bos_token=EOT, pad_token=EOT)
    fast.save_pretrained(folder)


def to_hf(checkpoint: str | Path, out: str | Path):
    """Write the HF folder ``out`` of a package checkpoint; returns the HF model."""
    checkpoint, out = Path(checkpoint), Path(out)
    native = load_pretrained(checkpoint)
    eos = None
    if (checkpoint / SPEC_FILE).is_file():
        eos = load_tokenizer(checkpoint).eot_id
    model = HF_MODELS[native.config.model_type](
        hf_config(native.config, eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
    )
    model.model.load_state_dict(native.state_dict())
    model.save_pretrained(out)
    tokenizer = _copy_tokenizer(checkpoint, out)
    if tokenizer is not None:
        write_hf_tokenizer(out, tokenizer)
    return model.eval()


def hf_kind(folder: str | Path) -> str:
    """``model_type`` of an HF folder's config.json (a clear error if it is not one of ours)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a saved model: config.json is missing")
    kind = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    if kind not in HF_MODELS:
        raise ValueError(f"{path} has model_type {kind!r}; expected one of {', '.join(HF_MODELS)}")
    return kind


def load_hf(folder: str | Path):
    """The HF model of one of our HF folders (no trust_remote_code needed: the classes are ours)."""
    return HF_MODELS[hf_kind(folder)].from_pretrained(folder).eval()


def from_hf(folder: str | Path, out: str | Path):
    """Write the package checkpoint ``out`` of an HF folder; returns the native model."""
    folder, out = Path(folder), Path(out)
    native = load_hf(folder).model
    native.save_pretrained(out)
    _copy_tokenizer(folder, out)
    return native


def is_hf_folder(folder: str | Path) -> bool:
    """True for an HF folder (its config.json has ``architectures`` or ``transformers_version``)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(config, dict) and ("transformers_version" in config or "architectures" in config)


def load_native(folder: str | Path):
    """The native model of a package checkpoint or of one of our HF folders."""
    return load_hf(folder).model if is_hf_folder(folder) else load_pretrained(folder)
