"""``results.json`` of an MQAR experiment: the runs (finished or diverged) and the summary over
seeds, written atomically after every run; ``--resume`` reuses the runs of an earlier
``results.json`` whose model and training spec are the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ...io import atomic_write_text
from ..common import spread

KEY = ("model", "width", "seed", "model_spec", "train")  # what makes two runs the same


def summarise(runs: Sequence[dict]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{model: {width: {setting: {mean, std (ddof 1), min, max, seeds}}}} over the finished runs."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for run in runs:
        if not run.get("diverged"):
            groups.setdefault(run["model"], {}).setdefault(str(run["width"]), []).append(run)
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for model, per_width in groups.items():
        out[model] = {}
        for width, group in sorted(per_width.items(), key=lambda item: int(item[0])):
            row: dict[str, dict[str, Any]] = {}
            for setting in group[0]["by_setting"]:
                row[setting] = {
                    **spread([r["by_setting"][setting] for r in group]),
                    "seeds": sorted(r["seed"] for r in group),
                    "params": group[0]["params"],
                }
            out[model][width] = row
    return out


class Results:
    """The experiment's record (``data``), saved to ``path`` on :meth:`save`; ``previous``: runs that
    ``--resume`` may reuse."""

    def __init__(self, path: Path, header: dict[str, Any], previous: Sequence[dict] = ()):
        self.path = path
        self.data: dict[str, Any] = {**header, "runs": []}
        self.previous = list(previous)

    @classmethod
    def start(cls, path: Path, header: dict[str, Any], resume: bool) -> "Results":
        previous = json.loads(path.read_text()).get("runs", []) if resume and path.is_file() else []
        return cls(path, header, previous)

    def reuse(self, key: dict[str, Any]) -> dict | None:
        """The earlier run with this key (``--resume``), copied into this record; else None."""
        for run in self.previous:
            if all(run.get(k) == key[k] for k in KEY) and not run.get("diverged"):
                self.data["runs"].append(run)
                self.save()
                return run
        return None

    def add(self, record: dict) -> None:
        self.data["runs"].append(record)
        self.save()

    def save(self) -> None:
        self.data["summary"] = summarise(self.data["runs"])
        atomic_write_text(self.path, json.dumps(self.data, indent=1))
