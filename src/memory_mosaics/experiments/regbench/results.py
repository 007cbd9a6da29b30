"""``results.json`` of a RegBench experiment: the runs (finished or diverged), the grid selections
and the summary over seeds, written atomically after every run; ``--resume`` reuses the runs of an
earlier ``results.json`` trained under the same protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ...io import atomic_write_text
from ..common import spread


def summarise(runs: Sequence[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {N: {accuracy/tvd/... mean, std (ddof 1), min, max, seeds}}} over the main runs
    (neither grid-only nor diverged)."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        if run.get("grid_only") or run.get("diverged"):
            continue
        groups.setdefault(run["model"], {}).setdefault(str(run["num_train"]), []).append(run)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, per_n in groups.items():
        out[kind] = {}
        for n, group in sorted(per_n.items(), key=lambda item: int(item[0])):
            row: dict[str, Any] = {"seeds": sorted(r["seed"] for r in group), "params": group[0]["params"]}
            for key in ("accuracy", "tvd", "best_val_loss", "train_time_s"):
                row |= {f"{key}_{stat}": v for stat, v in spread([r[key] for r in group]).items()}
            out[kind][n] = row
    return out


def same_run(record: dict, kind: str, num_train: int, seed: int, hp: dict) -> bool:
    return (record["model"], record["num_train"], record["seed"], record["hparams"]) == (kind, num_train, seed, hp)


# the entries of a run record that --resume reads, and their types
_RUN_FIELDS = {"model": str, "num_train": int, "seed": int, "hparams": dict, "epochs": int}


def read_previous(path: Path) -> dict[str, Any] | None:
    """The earlier ``results.json`` at ``path`` for ``--resume`` (None when there is none), checked:
    a file that is not JSON, or whose ``settings`` or ``runs`` are not what :meth:`Results.save`
    writes, raises ``ValueError`` naming the file and what is wrong (before any work)."""
    if not path.is_file():
        return None
    hint = "move it away or run without --resume"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {hint}") from None
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict) or not isinstance(old.get("runs"), list):
        raise ValueError(f"{path} is not a RegBench results file (no 'settings' object and 'runs' list); {hint}")
    for i, run in enumerate(old["runs"]):
        bad = (
            [k for k, kind in _RUN_FIELDS.items() if not isinstance(run.get(k), kind) or isinstance(run.get(k), bool)]
            if isinstance(run, dict)
            else ["the record itself"]
        )
        if bad:
            raise ValueError(f"{path}: run {i} has no valid {', '.join(bad)}; {hint}")
    return old


class Results:
    """The experiment's record (``data``), saved to ``path`` on :meth:`save`.

    ``previous``: the runs of an earlier ``results.json`` that may be reused (``--resume``)."""

    def __init__(self, path: Path, header: dict[str, Any], previous: Sequence[dict] = ()):
        self.path = path
        self.data: dict[str, Any] = {**header, "runs": [], "selection": []}
        self.previous = list(previous)

    @classmethod
    def start(cls, path: Path, header: dict[str, Any], resume: bool) -> "Results":
        """A new record; with ``resume``, the runs of ``path`` (if it exists) when its protocol is
        ``header["settings"]["protocol"]``."""
        previous: list[dict] = []
        old = read_previous(path) if resume else None
        if old is not None:
            if old["settings"].get("protocol") == header["settings"]["protocol"]:
                previous = old["runs"]
            else:
                print(f"--resume: {path} was trained under another protocol; training again", flush=True)
        return cls(path, header, previous)

    @property
    def runs(self) -> list[dict]:
        return self.data["runs"]

    def find(self, kind: str, num_train: int, seed: int, hp: dict) -> dict | None:
        """The run of these settings in this record, if any."""
        return next((r for r in self.runs if same_run(r, kind, num_train, seed, hp)), None)

    def reuse(self, kind: str, num_train: int, seed: int, hp: dict, epochs: int) -> dict | None:
        """Copy the earlier run of these settings and epochs (``--resume``) into this record, if any."""
        for r in self.previous:
            if same_run(r, kind, num_train, seed, hp) and r["epochs"] == epochs:
                found = {k: v for k, v in r.items() if k != "grid_only"}
                self.runs.append(found)
                print(f"{kind} N={num_train} seed={seed}: reused from {self.path}", flush=True)
                return found
        return None

    def add(self, record: dict) -> None:
        self.runs.append(record)

    def select(self, selection: dict) -> None:
        self.data["selection"].append(selection)

    def save(self) -> None:
        self.data["summary"] = summarise(self.runs)
        atomic_write_text(self.path, json.dumps(self.data, indent=1))
