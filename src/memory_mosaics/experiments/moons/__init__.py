"""``mosaics reproduce moons``: the three-moons experiment (spec 4.1, paper section 3, figures 3-5).

    mosaics reproduce moons [--heads 1|3|both] [--observer sun|moon] [--tie-break stable|numpy]
                            [--jobs N] [--bias-correction] [--replot]
                            [common flags: --seeds 0-4 --models --out --threads --device --progress --quick]

For each seed of ``--seeds`` (default: 0), train the 1-head and the 3-head 54-parameter memories
(:mod:`...models.moons`) on the 8 training systems (:mod:`.train`), then measure the autoregressive
generation error against the context length on the training systems, the validation system and a
system with unseen periods (:mod:`.evaluate`); the (seed, model) jobs run in ``--jobs`` processes
(:mod:`.jobs`). ``--heads`` is a shorthand for ``--models`` (1 = 1head, 3 = 3heads). The models are
tiny and run on the CPU (``--device`` auto or cpu). Writes to ``--out``:

- ``metrics.json``: settings, systems (periods in units and steps), per seed and model the training
  losses, error-vs-context curves and disentanglement, ``summary[model][split]`` (mean over seeds)
  and ``summary_median`` (median over seeds);
- ``seeds.md`` / ``seeds.json`` (:mod:`.report`): median, mean, standard deviation, min and max over
  seeds of the summary, and (both models) a row per seed;
- figures (:mod:`.figures`; ``--replot`` redraws them and the tables from ``metrics.json``).

A training run whose loss becomes NaN or infinite stops the experiment with one line naming the
seed and the model (exit status 1); no results are written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ...data.moons import OBSERVERS, TIE_BREAKS
from ...io import atomic_write_text
from ...training.loop import TrainingDiverged
from ..common import add_common_arguments, apply_threads, check_threads, seeds
from .evaluate import eval_windows, make_systems, systems_info
from .figures import plot_all
from .jobs import run_models
from .report import claims, over_seeds, seed_table, write_tables
from .settings import EVAL_SEED, FULL, HEADS_ARG, MODELS, QUICK

EXPERIMENT = "moons"
HELP = "three moons: 1 head vs 3 heads of a 54-parameter memory (paper section 3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=list(MODELS), default_threads=1)
    parser.add_argument("--heads", choices=list(HEADS_ARG), help="shorthand for --models: 1, 3 or both heads")
    parser.add_argument("--observer", choices=OBSERVERS, default="sun", help="see data/moons.py")
    parser.add_argument(
        "--tie-break", choices=TIE_BREAKS, default="stable", help="which tied systems are kept (see data/moons.py)"
    )
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the tables and figures from OUT/metrics.json"
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="models trained in parallel processes (default: one per CPU core)"
    )
    parser.add_argument(
        "--bias-correction",
        action="store_true",
        help="torch's bias-corrected AdamW instead of the reference's MLX Adam (training/mlx_adam.py)",
    )


def _check(args: argparse.Namespace) -> None:
    check_threads(args.threads)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.device not in ("auto", "cpu"):
        raise ValueError(f"--device {args.device}: the three-moons models run on the CPU (auto or cpu)")


def chosen_models(args: argparse.Namespace) -> list[str]:
    """``--heads`` if given, else ``--models``, in the order of MODELS."""
    chosen = HEADS_ARG[args.heads] if args.heads else args.models
    return [name for name in MODELS if name in chosen]


def run(args: argparse.Namespace) -> int:
    _check(args)
    threads = torch.get_num_threads()
    apply_threads(args.threads)
    try:
        return replot(Path(args.out)) if args.replot else reproduce(args)
    except TrainingDiverged as err:
        print(f"mosaics: error: moons: {err}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)


def replot(out: Path) -> int:
    """Tables and figures again from a finished experiment folder."""
    path = out / "metrics.json"
    if not path.is_file():
        raise ValueError(f"--replot: {path} not found (run the experiment first)")
    metrics = json.loads(path.read_text())
    write_tables(out, metrics["runs"])
    saved = metrics["settings"]
    plot_all(out, metrics, make_systems(saved["observer"], saved.get("tie_break", "stable")))
    return 0


def reproduce(args: argparse.Namespace) -> int:
    """Train, evaluate and write everything for ``mosaics reproduce moons``."""
    settings = replace(QUICK if args.quick else FULL, bias_correction=args.bias_correction)
    models, seed_list, out = chosen_models(args), seeds(args), Path(args.out)
    systems = make_systems(args.observer, args.tie_break)
    eval_x = eval_windows(systems, settings)  # (S * W, 800, 6)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    runs = run_models(seed_list, models, systems, eval_x, settings, args.jobs, args.threads, args.progress)
    elapsed = time.perf_counter() - start

    table = seed_table(runs)
    metrics = {
        "settings": {
            **asdict(settings),
            "observer": args.observer,
            "tie_break": args.tie_break,
            "seeds": seed_list,
            "eval_seed": EVAL_SEED,
        },
        "contexts": settings.contexts,
        "systems": systems_info(systems),
        "runs": runs,
        "summary": over_seeds(table, "mean"),
        "summary_median": over_seeds(table, "median"),
        "claims": claims(runs) if len(models) == 2 else None,
        "seconds": elapsed,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    seeds_md = write_tables(out, runs)
    plot_all(out, metrics, systems)
    print(seeds_md)
    print(f"trained and evaluated {len(seed_list)} seed(s) x {len(models)} model(s) in {elapsed:.0f} s; wrote {out}")
    return 0
