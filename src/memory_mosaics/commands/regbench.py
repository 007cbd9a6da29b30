"""``mosaics regbench``: RegBench data and training-free baselines.

* ``mosaics regbench data --num-train N [--seed S] --out FILE``: every environment (test, then
  validation, then train) as one JSON line ``{"split", "automaton", "tokens"}``; generator
  statistics on stdout.
* ``mosaics regbench baselines [--num-envs 500] [--seed S] [--out FILE]``: accuracy / TVD of the
  in-context n-grams and of the oracle on the first test environments, as JSON.

Training and evaluation of the models: ``mosaics reproduce regbench``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.regbench import make_splits, write_jsonl
from ..eval.regbench import baselines, generator_stats
from ..io import atomic_write_text

COMMAND = "regbench"
HELP = "RegBench data (random regular languages) and in-context n-gram / oracle baselines"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="regbench_command", required=True, metavar="SUBCOMMAND")

    data = sub.add_parser(
        "data",
        help="write the environments as JSON lines",
        description="Write every environment as one JSON line {split, automaton, tokens}.",
    )
    data.add_argument("--num-train", type=int, required=True, help="number of training environments N")
    data.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    data.add_argument("--num-test", type=int, default=500, help="test environments (default 500)")
    data.add_argument("--num-val", type=int, default=500, help="validation environments (default 500)")
    data.add_argument("--out", required=True, help="output .jsonl file")
    data.set_defaults(_regbench=run_data)

    base = sub.add_parser(
        "baselines",
        help="score the in-context n-grams and the oracle (JSON)",
        description="Accuracy and TVD of the in-context n-grams and the oracle on the test set.",
    )
    base.add_argument("--num-envs", type=int, default=500, help="first test environments scored (default 500)")
    base.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    base.add_argument("--max-order", type=int, default=4, help="largest n of the n-grams (default 4)")
    base.add_argument("--out", help="also write the JSON to this file")
    base.set_defaults(_regbench=run_baselines)


MAX_ENVS = 1_000_000  # environments per split: more would run for hours and fill the disk
MAX_ORDER = 16  # n-gram baselines grow with the order; the paper's stop at 4
MAX_SEED = 2**63 - 1


def _check_counts(**counts: int) -> None:
    for flag, value in counts.items():
        if not 0 <= value <= MAX_ENVS:
            raise ValueError(f"--{flag.replace('_', '-')} must be in [0, {MAX_ENVS:,}], got {value}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be in [0, 2**63 - 1], got {seed}")


def _check_out(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--out {path} is a directory, expected a file")
    if not out.parent.is_dir():
        raise ValueError(f"directory {out.parent} of --out does not exist")
    return out


def run_data(args) -> int:
    _check_counts(num_train=args.num_train, num_test=args.num_test, num_val=args.num_val)
    _check_seed(args.seed)
    out = _check_out(args.out)
    tic = time.perf_counter()
    splits = make_splits(args.num_train, seed=args.seed, num_test=args.num_test, num_val=args.num_val)
    write_jsonl(out, splits)
    counts = {name: len(envs) for name, envs in splits.items()}
    envs = [env for group in splits.values() for env in group]
    report = {"out": str(out), "seed": args.seed, "counts": counts, "seconds": round(time.perf_counter() - tic, 2)}
    if envs:
        report["stats"] = generator_stats(envs)
    print(json.dumps(report))
    return 0


def run_baselines(args) -> int:
    if args.num_envs <= 0:
        raise ValueError(f"--num-envs must be positive, got {args.num_envs}")
    _check_counts(num_envs=args.num_envs)
    if not 1 <= args.max_order <= MAX_ORDER:
        raise ValueError(f"--max-order must be in [1, {MAX_ORDER}], got {args.max_order}")
    _check_seed(args.seed)
    out = _check_out(args.out) if args.out else None
    envs = make_splits(0, seed=args.seed, num_test=args.num_envs, num_val=0)["test"]
    report = {"seed": args.seed, "environments": len(envs), "scores": baselines(envs, args.max_order)}
    text = json.dumps(report, indent=1)
    print(text)
    if out is not None:
        atomic_write_text(out, text + "\n")
    return 0


def run(args) -> int:
    return args._regbench(args)
