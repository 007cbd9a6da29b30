"""Checks shared by the commands (a helper module: no ``HELP``, so no subcommand)."""

from __future__ import annotations

import json
from pathlib import Path


def check_saved_model(ckpt: Path) -> None:
    """Refuse a checkpoint whose ``config.json`` is not a JSON object, naming the file (before loading)."""
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
