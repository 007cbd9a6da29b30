"""The effective settings of an MQAR experiment: the preset, then the command-line overrides, checked."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from ..common import seeds as common_seeds
from .presets import MODELS, PRESETS, TrainSpec


@dataclass
class Settings:
    preset: str
    models: list[str]
    widths: list[int]
    seeds: list[int]
    train: TrainSpec  # lr: each model's from ``lrs``
    lrs: dict[str, float]

    def spec(self, model: str) -> TrainSpec:
        """The training spec of ``model`` (its learning rate filled in)."""
        return dataclasses.replace(self.train, lr=self.lrs[model])

    def to_json(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "models": self.models,
            "widths": self.widths,
            "seeds": self.seeds,
            "train": self.train.to_json(),
            "lrs": self.lrs,
        }


def parse_lrs(items: list[str]) -> dict[str, float]:
    """['mosaic=3e-3', 'gpt=1e-3'] -> {'mosaic': 0.003, 'gpt': 0.001}; a bare '1e-3' sets every model."""
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.rpartition("=")
        names = [name] if name else list(MODELS)
        if name and name not in MODELS:
            raise ValueError(f"--lr: unknown model {name!r} in {item!r}; models: {', '.join(MODELS)}")
        try:
            lr = float(value)
        except ValueError:
            raise ValueError(f"--lr: not a learning rate: {item!r}") from None
        if not 0.0 < lr <= 1.0:
            raise ValueError(f"--lr must be in (0, 1], got {item!r}")
        out.update(dict.fromkeys(names, lr))
    return out


def resolve(args: argparse.Namespace) -> Settings:
    """The preset (``--quick``: the "quick" one) overridden by ``--widths``, ``--seeds``, ``--epochs``,
    ``--num-test``, ``--data-seed`` and ``--lr``."""
    name = "quick" if args.quick else args.preset
    preset = PRESETS[name]
    widths = list(dict.fromkeys(args.widths or preset.widths))
    if any(w < 16 or w % 16 for w in widths):
        raise ValueError(f"--widths must be multiples of 16 (the Mosaic's head size), got {widths}")
    if args.epochs is not None and args.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    if args.num_test is not None and args.num_test <= 0:
        raise ValueError(f"--num-test must be positive, got {args.num_test}")
    if not 0 <= args.data_seed < 1_000_000:
        raise ValueError(f"--data-seed must be in 0 .. 999999, got {args.data_seed}")
    train = dataclasses.replace(
        preset.train,
        epochs=args.epochs or preset.train.epochs,
        num_test=args.num_test or preset.train.num_test,
        data_seed=args.data_seed,
    )
    return Settings(
        preset=name,
        models=list(dict.fromkeys(args.models)),
        widths=widths,
        seeds=list(preset.seeds) if args.seeds is None else common_seeds(args),
        train=train,
        lrs={**preset.lrs, **parse_lrs(args.lr or [])},
    )
