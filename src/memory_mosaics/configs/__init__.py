"""The training presets shipped with the package (``*.toml`` beside this file), addressable by name.

``mosaics train --config cpu-d128`` and ``mosaics reproduce language --config cpu-d128`` find
``cpu-d128.toml`` here, in a checkout and in an installed wheel alike; a path to a config file
(``.toml`` or ``.json``) still works and wins over a preset of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).parent


def names() -> list[str]:
    """The presets' names: ``["cpu-d128", "cpu-d256", "mosaic-1b", "paper"]``."""
    return sorted(p.stem for p in FOLDER.glob("*.toml"))


def resolve(config: str | os.PathLike) -> Path:
    """The file a ``--config`` value names: an existing path as is, else the preset of that name
    (with or without ``.toml``; ``configs/NAME.toml``, the presets' place before they were packaged,
    also names it). Raises FileNotFoundError naming the presets otherwise."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name[: -len(".toml")] if path.name.endswith(".toml") else path.name
    if path.parent in (Path("."), Path("configs")) and name in names():
        return FOLDER / f"{name}.toml"
    raise FileNotFoundError(f"config file not found: {config} (a path, or a preset name: {', '.join(names())})")
