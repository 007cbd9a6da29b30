"""``mosaics lm-eval``: score a checkpoint with lm-evaluation-harness (the ``hf`` extra).

    mosaics lm-eval --checkpoint runs/lang/last --tasks lambada_openai hellaswag piqa arc_easy winogrande
    mosaics lm-eval --checkpoint DIR --tasks my_task --include-path my_tasks/ --out results.json

``--checkpoint``: a package checkpoint, an HF folder (``mosaics convert``) or a Hub id. Standard tasks
download their data sets from the Hub on first use (network needed); tasks of ``--include-path``
(YAML files) may read local data files and run offline. Prints lm_eval's table; ``--out`` writes its
results as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMAND = "lm-eval"
HELP = "score a checkpoint on lm-evaluation-harness tasks (needs the hf extra)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="checkpoint or HF folder, or a Hub id")
    parser.add_argument(
        "--tasks", required=True, nargs="+", metavar="TASK", help="task names (space or comma separated)"
    )
    parser.add_argument("--include-path", metavar="DIR", help="folder of extra task YAML files")
    parser.add_argument("--num-fewshot", type=int, default=None, help="examples in each prompt (default: the task's)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of few-shot sampling and generation")
    parser.add_argument("--out", metavar="FILE.json", help="write the results as JSON")


def check_options(args: argparse.Namespace) -> list[str]:
    """The task names; ValueError naming the first bad option (before any work)."""
    tasks = [t for item in args.tasks for t in item.split(",") if t]
    if not tasks:
        raise ValueError("--tasks needs at least one task name")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise ValueError(f"--include-path {args.include_path} is not a folder")
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise ValueError(f"--out {args.out}: folder {Path(args.out).resolve().parent} does not exist")
    return tasks


def run(args: argparse.Namespace) -> int:
    tasks = check_options(args)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table
    except ImportError:
        raise ValueError("mosaics lm-eval needs lm-evaluation-harness: pip install 'memory-mosaics[hf]'") from None
    from ..hf.harness import MosaicsLM
    from ..io import atomic_write_text

    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm_eval ls tasks`, or --include-path)")
    model = MosaicsLM(args.checkpoint, batch_size=args.batch_size, device=args.device)
    results = lm_eval.simple_evaluate(
        model=model,
        tasks=tasks,
        task_manager=manager,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )
    print(make_table(results))
    if args.out:
        summary = {"checkpoint": str(args.checkpoint), "results": results["results"], "config": results.get("config")}
        atomic_write_text(Path(args.out), json.dumps(summary, indent=2, default=str))
    return 0
