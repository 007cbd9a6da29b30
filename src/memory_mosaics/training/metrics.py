"""The training metrics log: rows appended to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard
when it is installed); a resumed run keeps the rows up to its checkpoint's step."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


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

    def __init__(self, out_dir: Path, resume_step: int | None, tensorboard: bool = True):
        self.jsonl_path, self.csv_path = out_dir / "metrics.jsonl", out_dir / "metrics.csv"
        rows = self._read() if resume_step is not None else []
        rows = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]  # drop steps the resumed run redoes
        self.jsonl = open(self.jsonl_path, "w", encoding="utf-8")
        self.csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS, extrasaction="ignore")
        self.csv.writeheader()
        for row in rows:
            self._write(row)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def _read(self) -> list[dict]:
        if not self.jsonl_path.is_file():
            return []
        rows = []
        for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill
                pass
        return rows

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
