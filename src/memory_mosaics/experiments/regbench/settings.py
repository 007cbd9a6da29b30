"""The effective settings of a RegBench experiment: the preset, then the command-line overrides,
checked; and the hyper-parameter grid of ``--grid`` / ``--grid-spec``."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..common import seeds as common_seeds
from .presets import PRESETS, PROTOCOL, HParams

GRID_KEYS = {
    "lr": float,
    "weight_decay": float,
    "n_embd": int,
    "n_layer": int,
    "n_head": int,
    "pmem_size": int,
    "dropout": float,
    "attn_dropout": float,
    "pmem_attn_dropout": float,
    "grad_clip": float,
}


@dataclass
class Settings:
    preset: str
    models: list[str]
    num_train: list[int]
    seeds: list[int]
    data_seed: int
    epochs: dict[int, int]  # of each N
    num_test: int
    num_val: int
    hparams: dict[str, HParams]  # of each model
    grid: dict[str, list] | None
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "epochs": {str(n): e for n, e in self.epochs.items()}}


MAX_NUM_TRAIN = 1_000_000  # training automata: more would take hours to draw (the paper stops at 20,000)
MAX_EPOCHS = 100_000
MAX_SEED = 2**63 - 1


def _grid_range(key: str) -> tuple[float, float]:
    """The values a grid key may take (both ends included; ``lr`` must also be > 0)."""
    if GRID_KEYS[key] is int:
        return 1, 1 << 16
    if "dropout" in key:
        return 0.0, 0.99
    return 0.0, 1e30


def _grid_range_text(key: str) -> str:
    low, high = _grid_range(key)
    return f"({low:g}, {high:g}]" if key == "lr" else f"[{low:g}, {high:g}]"


def parse_grid_spec(text: str) -> dict[str, list]:
    """'lr=1e-4,5e-4;weight_decay=0.01,0.1' -> {'lr': [1e-4, 5e-4], 'weight_decay': [0.01, 0.1]}."""
    grid: dict[str, list] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in GRID_KEYS or not values.strip():
            raise ValueError(f"bad --grid-spec entry {part!r}; keys: {', '.join(GRID_KEYS)}")
        try:
            grid[key] = [GRID_KEYS[key](v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"bad value in --grid-spec entry {part!r}") from None
        low, high = _grid_range(key)
        if not all(math.isfinite(v) and low <= v <= high and (key != "lr" or v > 0) for v in grid[key]):
            raise ValueError(f"--grid-spec {key} values must be finite and in {_grid_range_text(key)}: {part!r}")
    if not grid:
        raise ValueError("--grid-spec is empty")
    return grid


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in a fixed order."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def resolve(args: argparse.Namespace) -> Settings:
    """The preset (``--quick``: the "quick" one), overridden by ``--num-train``, ``--seeds``,
    ``--epochs``, ``--num-val`` and ``--grid`` / ``--grid-spec``."""
    if args.quick and args.preset:
        raise ValueError(f"--quick is a preset of its own: drop it or --preset {args.preset}")
    name = "quick" if args.quick else args.preset or "cpu"
    preset = PRESETS[name]
    num_train = list(args.num_train or preset.num_train)
    if any(not 0 < n <= MAX_NUM_TRAIN for n in num_train):
        raise ValueError(f"--num-train values must be in [1, {MAX_NUM_TRAIN:,}], got {num_train}")
    if args.epochs is not None and not 0 < args.epochs <= MAX_EPOCHS:
        raise ValueError(f"--epochs must be in [1, {MAX_EPOCHS:,}], got {args.epochs}")
    if not 0 <= args.data_seed <= MAX_SEED:
        raise ValueError(f"--data-seed must be in [0, 2**63 - 1], got {args.data_seed}")
    num_val = preset.num_val if args.num_val is None else args.num_val
    if num_val <= 0 or num_val > 500:
        raise ValueError(f"--num-val must be in 1..500, got {num_val}")
    grid = None
    if args.grid or args.grid_spec:
        grid = parse_grid_spec(args.grid_spec) if args.grid_spec else preset.grid
    return Settings(
        preset=name,
        models=list(dict.fromkeys(args.models)),
        num_train=num_train,
        seeds=list(preset.seeds) if args.seeds is None else common_seeds(args),
        data_seed=args.data_seed,
        epochs={n: args.epochs or preset.epochs(n) for n in num_train},
        num_test=preset.num_test,
        num_val=num_val,
        hparams={kind: dict(preset.models[kind]) for kind in dict.fromkeys(args.models)},
        grid=grid,
        protocol=PROTOCOL,
    )
