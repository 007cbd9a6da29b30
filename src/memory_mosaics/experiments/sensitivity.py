"""Hyper-parameter sensitivity of the Mosaic and of GPT-2: ``mosaics reproduce sensitivity``.

    mosaics reproduce sensitivity [--probes regbench language] [--lr-factors F ...] [--weight-decays W ...]
                                  [--jobs N] [--resume]
                                  [common flags: --seeds --models --out --threads --device --progress --quick]

For each model and probe (:mod:`.probes`: RegBench CPU preset at N = 1000, the language CPU config
for a short budget), one-at-a-time sweeps around the probe's own hyper-parameters: the learning rate
times each of ``--lr-factors`` (default: 5 values over 1.5 decades, 10^-0.75 .. 10^0.75) at the
probe's weight decay, and each of ``--weight-decays`` at the probe's learning rate. The score is the
final validation loss (both probes) and the test accuracy (RegBench). Outputs in ``--out``:
``results.json`` and ``sensitivity.png`` (score against the value, one line per model). The
sensitivity of a model is summarised as the spread (max - min) of its validation loss over each sweep.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..training.config import TrainConfig
from .common import add_common_arguments, apply_threads, pyplot, seeds
from .language import prepare_data
from .probes import LANGUAGE_CONFIG
from .studies import Study, add_study_arguments, check_jobs, summarise

EXPERIMENT = "sensitivity"
HELP = "learning-rate and weight-decay sensitivity of the Mosaic and GPT-2 (RegBench, language)"
MODELS = ("mosaic", "gpt")
PROBES = ("regbench", "language")
LR_FACTORS = tuple(round(10 ** (k * 0.375), 4) for k in range(-2, 3))  # 0.1778 .. 5.623: 1.5 decades
WEIGHT_DECAYS = (0.01, 0.1, 1.0)
SCORE = {"regbench": "best_val_loss", "language": "valid_loss"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=MODELS, default_seeds=(0,))
    add_study_arguments(parser, PROBES, PROBES)
    parser.add_argument(
        "--lr-factors", type=float, nargs="+", default=list(LR_FACTORS), help="multiples of the probe's learning rate"
    )
    parser.add_argument("--weight-decays", type=float, nargs="+", default=list(WEIGHT_DECAYS), help="weight decays")


def base_hparams(probe: str, kind: str, quick: bool) -> dict[str, float]:
    """The probe's own learning rate and weight decay for ``kind``."""
    if probe == "regbench":
        from .regbench.presets import PRESETS

        hp = PRESETS["quick" if quick else "cpu"].models[kind]
        return {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
    config = TrainConfig.from_file(LANGUAGE_CONFIG)
    return {"lr": config.lr, "weight_decay": config.weight_decay}


def jobs(args: argparse.Namespace) -> list[dict]:
    out = []
    for seed in seeds(args):  # seeds outermost: an interrupted study has every point with fewer seeds
        out += _points(args, seed)
    return out


def _points(args: argparse.Namespace, seed: int) -> list[dict]:
    out = []
    for probe in args.probes:
        for kind in args.models:
            base = base_hparams(probe, kind, args.quick)
            points = [("lr", base["lr"] * f) for f in args.lr_factors]
            points += [("weight_decay", w) for w in args.weight_decays if w != base["weight_decay"]]
            for name, value in points:
                overrides = {**base, name: value}
                if probe == "language":  # the config's schedule ends at min_lr: keep it below every peak
                    overrides["min_lr"] = min(1e-4, overrides["lr"] / 10)
                out.append(
                    {"probe": probe, "model": kind, "kind": kind, "sweep": name, "value": value}
                    | {"overrides": overrides, "seed": seed}
                )
    return out


def check(args: argparse.Namespace) -> None:
    check_jobs(args.jobs)
    for name in ("lr_factors", "weight_decays"):
        for v in getattr(args, name):
            if not math.isfinite(v) or v < 0 or (name == "lr_factors" and v == 0):
                raise ValueError(f"--{name.replace('_', '-')} must be finite and positive, got {v}")


def spreads(rows: list[dict]) -> list[dict]:
    """Per probe, model and sweep: the range (max - min) of the mean validation loss over the values."""
    out: dict[tuple, dict] = {}
    for r in rows:
        score = r.get(f"{SCORE[r['probe']]}_mean", math.nan)
        if math.isfinite(score):
            entry = out.setdefault((r["probe"], r["model"], r["sweep"]), {"lo": score, "hi": score})
            entry["lo"], entry["hi"] = min(entry["lo"], score), max(entry["hi"], score)
    return [
        {"probe": p, "model": m, "sweep": s, "val_loss_range": e["hi"] - e["lo"], "best_val_loss": e["lo"]}
        for (p, m, s), e in out.items()
    ]


def plot(rows: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    panels = list(dict.fromkeys((r["probe"], r["sweep"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (probe, sweep) in zip(axes[0], panels):
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = sorted(
                (r for r in rows if (r["probe"], r["sweep"], r["model"]) == (probe, sweep, model)),
                key=lambda r: r["value"],
            )
            score = SCORE[probe]
            ax.errorbar(
                [r["value"] for r in mine],
                [r[f"{score}_mean"] for r in mine],
                yerr=[r[f"{score}_std"] for r in mine],
                marker="o",
                capsize=3,
                label=model,
            )
        ax.set_xscale("log")
        ax.set_xlabel(sweep)
        ax.set_ylabel("validation loss")
        ax.set_title(probe)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    check(args)
    apply_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"experiment": EXPERIMENT, "quick": args.quick, "lr_factors": args.lr_factors}
    study = Study(out, {**header, "weight_decays": args.weight_decays}, args.resume, args.replot)
    if args.replot:
        runs = study.replot()
    else:
        if "language" in args.probes:  # the tokenizer and token caches, once for every job
            prepare_data(TrainConfig.from_file(LANGUAGE_CONFIG), "")
        runs = study.run(jobs(args), args)
    # the reference point (factor 1 at the probe's weight decay) belongs to both sweeps
    for r in [r for r in runs if r["sweep"] == "lr"]:
        base = base_hparams(r["probe"], r["model"], args.quick)
        if math.isclose(r["value"], base["lr"]):
            runs = runs + [{**r, "sweep": "weight_decay", "value": base["weight_decay"]}]
    rows = summarise(runs, ("probe", "model", "sweep", "value"), ("best_val_loss", "valid_loss", "accuracy", "tvd"))
    study.data["summary"] = rows
    study.data["spreads"] = spreads(rows)
    study.save()
    for s in study.data["spreads"]:
        print(
            f"{s['probe']} {s['model']} {s['sweep']}: validation loss range {s['val_loss_range']:.4f} "
            f"(best {s['best_val_loss']:.4f})"
        )
    figure = out / "sensitivity.png"
    print(f"wrote {study.path}" + (f" and {figure}" if plot(rows, figure) else ""))
    return 0
