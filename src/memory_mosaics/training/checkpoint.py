"""Training checkpoints, written atomically.

A run directory holds one folder per saved step and two symbolic links naming the ones to keep::

    OUT/ckpt-00001000/   config.json, model.safetensors   (model.save_pretrained)
                         tokenizer.json                    (tokenizer.save)
                         train_config.json                 (the resolved TrainConfig)
                         state.pt                          (optimiser, scaler, step, RNG states, data position)
    OUT/last -> ckpt-00001000
    OUT/best -> ckpt-00000800                              (best validation loss, when kept)

A checkpoint is first written into a hidden temporary folder, renamed into place, and only then
does a link switch to it (``os.replace`` of a symlink, atomic). A process killed at any moment
leaves ``last`` pointing at a complete checkpoint; leftovers are swept by the next save.
``state.pt`` holds only tensors, numbers, strings and containers of them, and is read back with
``torch.load(weights_only=True)``: nothing is unpickled. A checkpoint folder (or ``OUT/last``) is
also a saved model for :func:`memory_mosaics.models.load_pretrained`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from torch import nn

from ..models.base import CONFIG_NAME, WEIGHTS_NAME
from .config import TrainConfig

STATE_FILE = "state.pt"
LINKS = ("last", "best")
_PREFIX = "ckpt-"
_TMP_PREFIX = ".tmp-ckpt-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    tokenizer,
    config: TrainConfig,
    state: dict[str, Any],
    links: tuple[str, ...] = ("last",),
) -> Path:
    """Write the checkpoint of ``step`` and point ``links`` at it; return its folder.

    ``model`` is the bare :class:`~memory_mosaics.models.LanguageModel` (not a DDP wrapper).
    """
    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(step)
    linked = _linked(run_dir)
    if final.name not in linked:
        tmp = run_dir / f"{_TMP_PREFIX}{step:08d}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        config.save(tmp)
        torch.save(state, tmp / STATE_FILE)
        if final.exists():  # a stale folder from a run killed before it was linked
            shutil.rmtree(final)
        os.rename(tmp, final)
    for link in links:
        _point(run_dir / link, final.name)
    _sweep(run_dir)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The folder ``run_dir/last`` points at, or None."""
    last = Path(run_dir) / "last"
    return last.resolve() if (last / STATE_FILE).is_file() else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder given itself or its run directory (whose ``last`` is then used)."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return path
    if (path / "last" / CONFIG_NAME).is_file():
        return (path / "last").resolve()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise ValueError(
        f"{path} is neither a checkpoint (no {CONFIG_NAME}/{WEIGHTS_NAME}) nor a run directory with a 'last' checkpoint"
    )


def load_state(ckpt: str | os.PathLike) -> dict[str, Any]:
    """The training state of a checkpoint (tensors and plain values only)."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file():
        raise ValueError(f"{ckpt} has no {STATE_FILE}: it is a saved model, not a training checkpoint")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(model: nn.Module, ckpt: str | os.PathLike, device: torch.device | str = "cpu") -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model`` (shapes must match)."""
    load_model(model, Path(ckpt) / WEIGHTS_NAME, device=str(device))


def _point(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _linked(run_dir: Path) -> set[str]:
    names = set()
    for link in LINKS:
        p = run_dir / link
        if p.is_symlink():
            names.add(os.readlink(p))
    return names


def _sweep(run_dir: Path) -> None:
    """Remove checkpoint folders no link points at, and temporaries of earlier (killed) saves."""
    keep = _linked(run_dir)
    for p in run_dir.iterdir():
        if (p.name.startswith(_PREFIX) and p.name not in keep and p.is_dir()) or p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_symlink() and any(p.name.startswith(f".{link}.tmp.") for link in LINKS):
            p.unlink()
