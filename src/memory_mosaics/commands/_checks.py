"""Checks shared by the commands (a helper module: no ``HELP``, so no subcommand)."""

from __future__ import annotations

import json
from pathlib import Path


def check_saved_model(ckpt: Path) -> None:
    """Refuse, naming the file, a checkpoint whose files do not match its manifest (sizes, SHA-256) or
    whose ``config.json`` is not a JSON object (before loading)."""
    from ..training.checkpoint import verify_checkpoint

    problem = verify_checkpoint(ckpt)
    if problem:
        raise ValueError(f"{problem}; the checkpoint is damaged: use another one")
    path = Path(ckpt) / "config.json"
    if not path.is_file():
        return  # the loader says which file is missing
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is damaged: use another one") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a model config (a JSON object, not a {type(data).__name__}); "
            "the checkpoint is damaged: use another one"
        )


def load_checkpoint_tokenizer(ckpt: Path):
    """The checkpoint's tokenizer; a damaged ``tokenizer.json`` is named instead of a traceback (the
    tokenizers library raises a bare ``Exception``)."""
    from ..data.tokenizers import SPEC_FILE, load_tokenizer

    try:
        return load_tokenizer(ckpt)
    except Exception as err:
        if not isinstance(err, (AttributeError, KeyError, TypeError)) and type(err) is not Exception:
            raise
        path = Path(ckpt) / SPEC_FILE
        raise ValueError(f"{path} is not a valid tokenizer file ({err}); use another checkpoint") from None
