"""Training checkpoints, written atomically, and the run folder that holds them.

A run directory holds one folder per saved step, two symbolic links naming the ones to keep, and a
manifest of the checkpoints this run wrote::

    OUT/ckpt-00001000/   config.json, model.safetensors   (model.save_pretrained)
                         tokenizer.json                    (tokenizer.save)
                         train_config.json                 (the resolved TrainConfig)
                         state.pt                          (optimiser, scaler, step, RNG states, data position)
                         sharded/                          (parallel = fsdp: model and optimiser shards of
                                                            every process, torch.distributed.checkpoint;
                                                            state.pt then holds no optimiser)
                         checkpoint_manifest.json          (format, model kind, config hash, size and
                                                            SHA-256 of every file; written last)
    OUT/last -> ckpt-00001000
    OUT/best -> ckpt-00000800                              (best validation loss, when kept)
    OUT/run_manifest.json                                  (checkpoints written by this run; last, best)
    OUT/train.lock                                         (flock of the training that holds the folder)

A checkpoint is first written into a hidden temporary folder, recorded in the manifest, renamed into
place, and only then does a link switch to it (``os.replace`` of a symlink, atomic). A process killed
at any moment leaves ``last`` pointing at a complete checkpoint; temporaries of killed saves are swept
when the next training takes the folder (:func:`sweep_temporaries`, only this module's own names).

No data loss: a save deletes only checkpoints that the manifest says this run wrote and that the
retention policy retires (all but ``last`` and ``best``; renamed to a temporary name before it is deleted,
so a kill never leaves a partial folder under a checkpoint name); a folder of any other name, or one this run
did not write (a user's ``ckpt-my-finetune``, another run's ``ckpt-00000099``), is never touched. A
``last``/``best`` that is not a link (a run folder copied with ``cp -L``) is moved aside to
``last.replaced-<timestamp>``, never deleted.

Every checkpoint carries ``checkpoint_manifest.json``, written atomically after all its other files:
:func:`checkpoint_problem` (resume) and :func:`verify_checkpoint` (``mosaics eval``/``generate``)
check each file's size and SHA-256 against it, so a truncated, emptied or edited file is named
instead of being loaded. A folder without it (a model saved by ``save_pretrained``, or a checkpoint
of an older version) is accepted unverified.

``state.pt`` holds only tensors, numbers, strings and containers of them, and is read back with
``torch.load(weights_only=True)``: nothing is unpickled. A checkpoint folder (or ``OUT/last``) is
also a saved model for :func:`memory_mosaics.models.load_pretrained`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model
from torch import nn

from ..io import atomic_write_text
from ..models.base import CONFIG_NAME, WEIGHTS_NAME
from .config import CONFIG_FILE, TrainConfig

STATE_FILE = "state.pt"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint folder of a sharded (FSDP) training state
CHECKPOINT_MANIFEST = "checkpoint_manifest.json"
CHECKPOINT_FORMAT = 1
MANIFEST_FILE = "run_manifest.json"
LOCK_FILE = "train.lock"
METRICS_FILES = ("metrics.jsonl", "metrics.csv")
LINKS = ("last", "best")
_PREFIX = "ckpt-"
_TMP_PREFIX = ".tmp-ckpt-"
_STEP_NAME = re.compile(r"ckpt-(\d{8})(?:-\d+)?")


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


# ---------------------------------------------------------------------- the run manifest
def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's manifest: ``checkpoints`` (names this run wrote and still keeps), ``last``, ``best``."""
    path = Path(run_dir) / MANIFEST_FILE
    manifest: dict[str, Any] = {"format": 1, "checkpoints": [], "last": None, "best": None}
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is unreadable ({err}); move it away to resume without it") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("checkpoints"), list):
            raise ValueError(f"{path} is not a run manifest; move it away to resume without it")
        manifest.update(saved)
    return manifest


def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")


# ---------------------------------------------------------------------- the checkpoint manifest
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_checkpoint_manifest(folder: str | os.PathLike, step: int, model_type: str) -> None:
    """Record the size and SHA-256 of every file of ``folder`` in ``checkpoint_manifest.json`` (atomically;
    call it after every other file is written)."""
    folder = Path(folder)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != CHECKPOINT_MANIFEST and not p.name.startswith(".")
    }
    sharded = folder / SHARDED_DIR  # every file of it, DCP's .metadata index included
    for p in sorted(sharded.iterdir()) if sharded.is_dir() else ():
        files[f"{SHARDED_DIR}/{p.name}"] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model_type": model_type,
        "config_sha256": files[CONFIG_NAME]["sha256"],
        "files": files,
    }
    atomic_write_text(folder / CHECKPOINT_MANIFEST, json.dumps(manifest, indent=1) + "\n")


def verify_checkpoint(folder: str | os.PathLike) -> str | None:
    """Why the files of ``folder`` do not match its ``checkpoint_manifest.json`` (naming the file), or
    None when they all do or when there is no manifest (a plain saved model: unverified)."""
    folder = Path(folder)
    path = folder / CHECKPOINT_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest["format"] != CHECKPOINT_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest['format']!r}")
        entries = [(str(name), int(e["size"]), str(e["sha256"])) for name, e in files.items()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"{path} is damaged ({type(err).__name__}: {err})"
    for name, size, sha in entries:
        file = folder / name
        parts = Path(name).parts
        if parts not in ((Path(name).name,), (SHARDED_DIR, Path(name).name)) or ".." in parts or not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != size:
            return f"{file} has {file.stat().st_size} bytes, its manifest says {size} (truncated or replaced)"
        if _sha256(file) != sha:
            return f"{file} does not match its SHA-256 in {CHECKPOINT_MANIFEST} (corrupted or edited)"
    return None


# ---------------------------------------------------------------------- saving
def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    tokenizer,
    config: TrainConfig,
    state: dict[str, Any],
    links: tuple[str, ...] = ("last",),
    staged: Path | None = None,
) -> Path:
    """Write the checkpoint of ``step`` and point ``links`` at it; return its folder.

    ``model`` is the bare :class:`~memory_mosaics.models.LanguageModel` (not a DDP wrapper). The
    checkpoints this run wrote that no link keeps any more are then deleted (and only those).
    ``staged``: the :func:`staging_folder` into which every process has already written its part
    (the ``sharded/`` state); it is completed and renamed into place instead of a fresh temporary.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    ours = set(manifest["checkpoints"])
    name = checkpoint_name(step)
    if name not in ours and os.path.lexists(run_dir / name):
        # a folder this run did not write holds the name: keep it, and write ours beside it
        k = 2
        while os.path.lexists(run_dir / f"{name}-{k}") and f"{name}-{k}" not in ours:
            k += 1
        name = f"{name}-{k}"
    final = run_dir / name
    if not (name in ours and name in (manifest.get("last"), manifest.get("best")) and _is_checkpoint(final)):
        tmp = staged or run_dir / f"{_TMP_PREFIX}{step:08d}.{os.getpid()}"
        if staged is None:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp)
            tokenizer.save(tmp)
            config.save(tmp)
            torch.save(state, tmp / STATE_FILE)
            write_checkpoint_manifest(tmp, step, model.config.model_type)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # e.g. disk full: leave no partial folder
            raise
        if name not in ours:
            manifest["checkpoints"].append(name)
            _write_manifest(run_dir, manifest)
        if os.path.lexists(final):  # ours, from a save killed before it was linked
            _discard(run_dir, name)
        os.rename(tmp, final)
    elif staged is not None:  # this step is already saved and linked: the staged copy is not needed
        shutil.rmtree(staged, ignore_errors=True)
    for link in links:
        _point(run_dir / link, name)
        manifest[link] = name
    keep = {manifest.get(link) for link in LINKS}
    retired = [c for c in manifest["checkpoints"] if c not in keep]
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c in keep]
    _write_manifest(run_dir, manifest)
    for old in retired:
        _discard(run_dir, old)
    return final


def staging_folder(run_dir: str | os.PathLike, step: int) -> Path:
    """The temporary folder into which all processes write the sharded state of ``step`` before rank 0
    completes it (:func:`save_checkpoint` ``staged``); the same name on every process, swept with the
    other temporaries. Only one training holds the run folder (:class:`RunLock`)."""
    return Path(run_dir) / f"{_TMP_PREFIX}{step:08d}.staged"


def _discard(run_dir: Path, name: str) -> None:
    """Delete the checkpoint folder ``name``: first renamed to a temporary name (atomic), so that a
    kill during the deletion never leaves a partial folder under a checkpoint's name (the
    temporary is swept at the next start)."""
    if not os.path.lexists(run_dir / name):
        return
    doomed = run_dir / f"{_TMP_PREFIX}retired-{name}.{os.getpid()}"
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(run_dir / name, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _point(link: Path, target: str) -> None:
    if os.path.lexists(link) and not link.is_symlink():  # a folder or file (a copy made with cp -L)
        os.rename(link, link.with_name(f"{link.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"))
    tmp = link.with_name(f".{link.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def sweep_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Remove what killed saves left behind (this module's temporary names only); return their names."""
    run_dir = Path(run_dir)
    tmp_files = tuple(f".{name}." for name in (CONFIG_FILE, MANIFEST_FILE))
    swept = []
    for p in run_dir.iterdir():
        name = p.name
        if name.startswith(_TMP_PREFIX) or any(name.startswith(f".{link}.tmp.") for link in LINKS):
            pass
        elif name.startswith(tmp_files) and name.endswith(".tmp"):
            pass
        else:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        swept.append(name)
    return swept


# ---------------------------------------------------------------------- the run folder
def previous_run(run_dir: str | os.PathLike) -> list[str]:
    """What ``run_dir`` holds of an earlier training: checkpoint folders, metrics, config, manifest, links."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = {CONFIG_FILE, MANIFEST_FILE, *METRICS_FILES, *LINKS}
    return sorted(
        p.name
        for p in run_dir.iterdir()
        if p.name in names or p.name.startswith(_PREFIX) or (p.is_dir() and _is_checkpoint(p))
    )


def checkpoint_problem(ckpt: str | os.PathLike) -> str | None:
    """Why ``ckpt`` is not an intact training checkpoint, or None when it is."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return "missing" if not os.path.lexists(ckpt) else "not a folder (or a dangling link)"
    for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_FILE):
        if not (ckpt / name).is_file():
            return f"no {name}"
    problem = verify_checkpoint(ckpt)
    if problem:
        return problem
    try:
        with safe_open(str(ckpt / WEIGHTS_NAME), framework="pt") as f:
            f.keys()
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file makes the checkpoint damaged
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if (
        isinstance(state, dict)
        and state.get("sharded") == SHARDED_DIR
        and not (ckpt / SHARDED_DIR / ".metadata").is_file()
    ):
        return f"no {SHARDED_DIR}/.metadata"
    return state_problem(state)


# the training state's entries and their types (Trainer.save writes them, Trainer._restore reads them)
_STATE_TYPES = {
    "step": int,
    "tokens_seen": int,
    "best_val": float,
    "optimizer": dict,
    "scaler": dict,
    "data_rng": torch.Tensor,
    "torch_rng": list,
    "cuda_rng": list,
}


def state_problem(state: Any) -> str | None:
    """Why ``state`` (a loaded ``state.pt``) is not a training state, or None when it is."""
    if not isinstance(state, dict):
        return f"{STATE_FILE} holds no training state (a {type(state).__name__})"
    sharded = state.get("sharded") == SHARDED_DIR  # the optimiser is in the sharded/ folder
    for key, kind in _STATE_TYPES.items():
        if key == "optimizer" and sharded:
            continue
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{STATE_FILE} holds no valid {key!r} (got {type(value).__name__})"
    if state["step"] < 0 or not (sharded or {"state", "param_groups"} <= set(state["optimizer"])):
        return f"{STATE_FILE} holds no valid training state (step {state['step']})"
    return None


def _is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def find_resume_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """The checkpoint to resume: ``last`` when intact, else the newest intact one this run's manifest
    lists or that is named ``ckpt-NNNNNNNN``; and a note saying why ``last`` was passed over (or None).
    ``(None, None)`` when the folder holds no checkpoint at all (a run killed before its first save); a
    folder whose checkpoints are all damaged is refused (``ValueError``), since starting afresh would
    retire them."""
    run_dir = Path(run_dir)
    last = run_dir / "last"
    problem = checkpoint_problem(last)
    if problem is None:
        return last.resolve(), None
    try:
        ours = set(read_manifest(run_dir)["checkpoints"])
    except ValueError:
        ours = set()
    candidates = []  # newest first by the step in the name; the first intact one is taken
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        match = _STEP_NAME.fullmatch(p.name)
        if match or p.name in ours:
            candidates.append((int(match.group(1)) if match else -1, p.name in ours, p.name, p))
    for *_, p in sorted(candidates, reverse=True):
        if checkpoint_problem(p) is None:
            return p.resolve(), f"'last' is {problem}; fell back to the newest intact checkpoint {p}"
    if candidates or os.path.lexists(last):  # starting afresh would retire them: refuse, change nothing
        names = ", ".join(sorted(c[2] for c in candidates)) or "last"
        raise ValueError(
            f"{run_dir}: 'last' is {problem} and no checkpoint is intact ({names}); nothing was changed: "
            "move the damaged checkpoints away to start afresh, or choose another --out"
        )
    return None, None


class RunLock:
    """An exclusive ``flock`` on ``run_dir/train.lock``, holding the holder's pid; released by :meth:`release`."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.file = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                self.file.close()
                raise
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise ValueError(
                f"{run_dir} is in use by another training (pid {holder}, lock {self.path}); "
                "wait for it to end or choose another --out"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


# ---------------------------------------------------------------------- loading
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
    """Load a checkpoint's ``model.safetensors`` into ``model``. A checkpoint of another model kind or
    of other shapes is refused (``ValueError``) naming the checkpoint, the kind or tensor, and what was
    expected."""
    ckpt = Path(ckpt)
    config_path = ckpt / CONFIG_NAME
    try:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{config_path} is not valid JSON ({err}); the checkpoint is damaged: use another one"
        ) from None
    if not isinstance(saved, dict):
        raise ValueError(f"{config_path} is not a model config (a {type(saved).__name__}); use another checkpoint")
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind is not None and saved.get("model_type") != kind:
        raise ValueError(
            f"{ckpt} holds a {saved.get('model_type')!r} model where a {kind!r} one was expected "
            "(--model); resume with the run's own --model or choose another --out"
        )
    with safe_open(str(ckpt / WEIGHTS_NAME), framework="pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    for name, tensor in model.state_dict().items():
        if name in shapes and shapes[name] != tuple(tensor.shape):
            raise ValueError(
                f"{ckpt}: tensor {name} has shape {list(shapes[name])}, this model expects {list(tensor.shape)} "
                "(the config's sizes or vocabulary differ from the checkpoint's); use the run's own config"
            )
    try:
        load_model(model, ckpt / WEIGHTS_NAME, device=str(device))
    except RuntimeError as err:  # missing or unexpected tensors
        raise ValueError(f"{ckpt} does not fit this model: {' '.join(str(err).split())[:300]}") from None
