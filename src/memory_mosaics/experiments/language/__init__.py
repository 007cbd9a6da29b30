"""Language modelling, Mosaic vs GPT-2 (spec section 4.2: figures 7 and 8, tables 4 and 5).

    mosaics reproduce language [--config cpu-d128] [--depths 1 2 4] [--max-steps N]
                               [--models mosaic gpt] [--v2-depths D] [--lrs 2e-3 4e-3 8e-3 --sweep-steps N]
                               [--long-context 4] [--jobs 2] [--deadline-s S] [--seeds S ...] [--replot]
                               [common flags: --out --threads --device --progress --quick]

1. Learning rates (optional, ``--lrs``): for every (model, depth), short runs of ``--sweep-steps``
   at each learning rate; the one with the lowest final validation loss is that model's learning
   rate for its full runs (written to ``sweep.json``); a sweep run that fails (diverges) is
   recorded and left out of the choice (:mod:`.runs`).
2. Depth sweep (figure 7): for every depth, a Mosaic and a GPT-2 of equal block parameter count
   (12 d^2 per block) are trained with the same data, steps and hyper-parameters, each by the
   trainer in its own process, ``--jobs`` at a time; ``--v2-depths`` adds a Mosaic with the v2
   switches at those depths; each seed of ``--seeds`` is a run (the first keyed KIND-DEPTH). A
   finished run is reused and an interrupted one resumed; ``--deadline-s`` stops the runs still
   going at that time (they are evaluated as they stand, marked unfinished).
3. Evaluation (figure 8, :mod:`.evaluate`): each model's loss at every position of
   ``context``-token windows of the validation text and of the out-of-distribution text
   (Wikipedia); with ``--long-context F`` the Mosaics also on windows F times longer.
4. Generations (tables 4-5), figures (:mod:`.report`) and the analysis (:mod:`.analysis`).

Writes ``results.json``, ``sweep.json``, ``analysis.json``, ``figure7.png``, ``figure8.png``,
``diagnostics.png`` and ``generations.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from ... import configs
from ...data.sources import build_tokenizer, open_corpus, resolve_cache_dir
from ...training.config import TrainConfig, parse_assignment
from ..common import add_common_arguments, apply_threads, check_threads, resolve_device, seeds
from .analysis import analyse
from .evaluate import evaluate_all, summary_row
from .report import figures, generations_markdown
from .runs import plan_runs, train_all

EXPERIMENT = "language"
HELP = "Mosaic vs GPT-2 language models: depth sweep, out-of-distribution loss by position, generations"
QUICK = [
    "eval_interval=3",
    "eval_windows=4",
    "checkpoint_interval=0",
    "log_interval=1",
    "batch_size=4",
    "context=64",
    "n_embd=32",
    "n_head=2",
    "tokenizer=bpe:512",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=("mosaic", "gpt"), default_seeds=(TrainConfig.seed,))
    parser.add_argument(
        "--config",
        default="cpu-d128",
        help=f"training preset shared by all runs: a name ({', '.join(configs.names())}) or a TOML/JSON file",
    )
    parser.add_argument("--depths", type=int, nargs="+", help="model depths (default: 1 2 4; --quick: 1)")
    parser.add_argument("--v2-depths", type=int, nargs="*", default=[], help="depths at which to add a v2 Mosaic")
    parser.add_argument("--max-steps", type=int, help="override the preset's max_steps")
    parser.add_argument("--lrs", type=float, nargs="+", help="learning rates to sweep per (model, depth)")
    parser.add_argument(
        "--sweep-steps", type=int, help="steps of each learning-rate sweep run (default: 1000; --quick: 3)"
    )
    parser.add_argument(
        "--long-context",
        type=int,
        default=0,
        metavar="F",
        help="also evaluate the Mosaics on windows F times the training context",
    )
    parser.add_argument("--deadline-s", type=float, default=0, help="stop training runs after this many seconds")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="no training: redo the figures and the analysis from --out's results.json and runs",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="other overrides for every run")
    parser.add_argument("--ood", default="shared:ood/wikipedia.txt", help="out-of-distribution evaluation text")
    parser.add_argument(
        "--eval-windows", type=int, help="windows per evaluation corpus (0: all; default: 200; --quick: 4)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time (one thread each when > 1)")


def _fill_defaults(args: argparse.Namespace) -> None:
    """The defaults of the options not given (``--quick`` has smaller ones); an option given
    explicitly is never overridden by ``--quick``."""
    quick = {"depths": [1], "eval_windows": 4, "sweep_steps": 3, "max_steps": 6}
    full = {"depths": [1, 2, 4], "eval_windows": 200, "sweep_steps": 1000, "max_steps": None}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _check(args: argparse.Namespace) -> None:
    check_threads(args.threads)
    for name in ("jobs", "sweep_steps", "max_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if any(d < 1 for d in [*args.depths, *args.v2_depths]):
        raise ValueError("--depths and --v2-depths must be >= 1")
    if args.eval_windows < 0 or args.long_context < 0 or not 0 <= args.deadline_s < math.inf:
        raise ValueError("--eval-windows, --long-context and --deadline-s must be finite and >= 0")
    if any(not 0 < lr < math.inf for lr in args.lrs or ()):
        raise ValueError(f"--lrs must be finite and > 0, got {args.lrs}")


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset, then ``--quick``, ``--max-steps``, ``--set``, and the device/thread/progress flags."""
    try:
        configs.resolve(args.config)
    except FileNotFoundError:
        raise ValueError(
            f"--config {args.config}: no such file, and no preset of that name ({', '.join(configs.names())})"
        ) from None
    overrides = dict(parse_assignment(a) for a in [*(QUICK if args.quick else []), *args.set])
    if args.max_steps:
        overrides.setdefault("max_steps", args.max_steps)
    if args.threads or args.jobs > 1:  # else the preset's
        overrides["threads"] = args.threads or 1
    overrides.update(device=args.device, progress=False)
    return TrainConfig.from_dict(overrides, TrainConfig.from_file(args.config))


def prepare_data(cfg: TrainConfig, ood: str) -> None:
    """Build the tokenizer and the token caches once, before the runs that share them start."""
    cache = resolve_cache_dir(cfg.cache_dir)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.train, cache, cfg.separator, cfg.text_field)
    for source in (cfg.train, cfg.valid, ood):
        if source:
            open_corpus(source, tokenizer, cache, cfg.separator, cfg.text_field)


def run(args: argparse.Namespace) -> int:
    start = time.time()
    _fill_defaults(args)
    _check(args)
    out = Path(args.out)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    if args.replot:
        return replot(args, out, device)
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(args)
    prepare_data(base, args.ood)
    kinds = {d: [*args.models, *(["mosaic-v2"] if d in args.v2_depths else [])] for d in args.depths}
    sweeps, runs, sweep_record = plan_runs(out, kinds, seeds(args), args.lrs, args.sweep_steps)
    print(f"[language] {len(sweeps)} sweep + {len(runs)} runs from {args.config}", flush=True)
    longest_first = sorted(sweeps, key=lambda r: -r.depth) + sorted(runs, key=lambda r: -r.depth)  # the critical path
    train_all(longest_first, base, args.jobs, start + args.deadline_s if args.deadline_s else None)
    windows = args.eval_windows or None
    results = evaluate_all(runs, base.context, args.ood, windows, args.long_context, device, 20 if args.quick else 60)
    summary = {key: summary_row(e) for key, e in results.items()}
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": args.config,
                "overrides": args.set,
                "context": base.context,
                "sweep": sweep_record,
                "summary": summary,
                "runs": results,
            },
            indent=1,
        )
    )
    figures(results, args.depths, out)
    (out / "generations.md").write_text(generations_markdown(results, args.depths))
    analyse(out, results, base.context, args.ood, windows, device)
    print(json.dumps(summary, indent=1))
    return 0


def replot(args: argparse.Namespace, out: Path, device) -> int:
    """Figures and analysis again from a finished experiment folder."""
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"--replot: {path} not found (run the experiment first)")
    saved = json.loads(path.read_text())
    results = saved["runs"]
    figures(results, sorted({e["depth"] for e in results.values()}), out)
    analyse(out, results, saved["context"], args.ood, args.eval_windows or None, device)
    return 0
