"""The training metrics log: rows appended to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard
when it is installed).

The files are only ever appended to, never rewritten: a resumed run opens them in append mode (the
CSV header is written only when the file is new), so rows logged before a crash stay in the file,
including those of steps after the checkpoint the run resumed from, which the resumed run logs again.
A reader must therefore take the **last row per (split, step)** (as
:func:`memory_mosaics.experiments.language.evaluate.curves` does); :func:`last_rows` does it.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any


def last_rows(rows: list[dict]) -> list[dict]:
    """The last row of each (split, step), in the order of those last rows' first appearance by step."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("split"), row.get("step"))
        latest.pop(key, None)  # a row logged again moves to its new place
        latest[key] = row
    return list(latest.values())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``RUN/metrics.jsonl``, the last of each (split, step), sorted by step (a line cut
    by a kill is skipped)."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # blank, or cut by a kill
            continue
    return sorted(last_rows(rows), key=lambda row: row["step"])


class MetricsLog:
    """Rows of metrics appended to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard if installed)."""

    FIELDS = (
        "step",
        "split",
        "loss",
        "perplexity",
        "lr",
        "grad_norm",
        "tokens",
        "tokens_per_s",
        "data_fraction",
        "elapsed_s",
    )

    def __init__(self, out_dir: Path, tensorboard: bool = True):
        self.jsonl_path, self.csv_path = out_dir / "metrics.jsonl", out_dir / "metrics.csv"
        self.jsonl = _open_append(self.jsonl_path)
        new_csv = not self.csv_path.is_file() or self.csv_path.stat().st_size == 0
        self.csv_file = _open_append(self.csv_path)
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS, extrasaction="ignore")
        if new_csv:
            self.csv.writeheader()
            self.csv_file.flush()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError as err:  # optional: said, never skipped silently
                warnings.warn(
                    f"TensorBoard logging requested but unavailable ({err}): metrics go to metrics.jsonl/csv "
                    "only; pip install 'memory-mosaics[tensorboard]', or set tensorboard = false in the config"
                )

    def _write(self, row: dict) -> None:
        self.jsonl.write(json.dumps(row) + "\n")
        self.csv.writerow(row)

    def log(self, row: dict[str, Any]) -> None:
        self._write(row)
        self.jsonl.flush()
        self.csv_file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{row['split']}/{key}", value, row["step"])

    def close(self) -> None:
        self.jsonl.close()
        self.csv_file.close()
        if self.tb is not None:
            self.tb.close()


def _open_append(path: Path):
    """``path`` opened for appending; a last line cut by a kill is ended first, so the next row stays whole."""
    cut = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    f = open(path, "a", newline="", encoding="utf-8")
    if cut:
        f.write("\n")
        f.flush()
    return f
