"""``mosaics train``: train a Memory Mosaic or a GPT-2 language model.

    mosaics train --config cpu-d128 --model gpt --n-layer 2 --out runs/gpt-2l
    mosaics train --model mosaic --data corpus.txt --out runs/x --max-steps 1000 [--resume]
    torchrun --nproc_per_node 2 -m memory_mosaics.cli train --config ... --out runs/ddp

Settings resolve as: defaults < the run's saved config (with --resume) < --config FILE < options.
Every field of :class:`~memory_mosaics.training.config.TrainConfig` has an option (``--n-embd``,
``--grad-accum``...); ``--set KEY=VALUE`` and ``--model-arg KEY=VALUE`` reach any field and any
model config field. The resolved config is printed and written to ``OUT/train_config.json``.

Every value is checked before any work (:meth:`TrainConfig.validate`): numbers finite and in range
(``lr`` in (0, 1e30]; ``min_lr`` in [0, 1e30]; ``weight_decay``, ``grad_clip`` >= 0; ``betas`` and
``dropout`` in [0, 1); ``threads`` at most the CPUs; sizes positive, and a model whose weights
cannot fit in memory is refused with the estimate); a bad one ends with one line naming the option
and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ..training.config import CONFIG_FILE, TrainConfig, parse_assignment

HELP = "train a Memory Mosaic or GPT-2 language model (single process or torchrun)"

_HELP = {
    "train": "training corpus: a text file or folder, a .jsonl file, or shared:RELATIVE_PATH",
    "valid": "validation corpus (evaluated every --eval-interval steps)",
    "tokenizer": "bpe:VOCAB (trained on the training corpus), gpt2[:RANKS_PATH] or a tokenizer folder",
    "model": "mosaic or gpt",
    "batch_size": "global batch in sequences per optimiser step (over processes and accumulation)",
    "grad_accum": "micro-steps per optimiser step",
    "context": "training crop length in tokens (GPT's block size)",
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16",
    "cache_dir": "token cache root (default $MOSAICS_CACHE_DIR or ~/.cache/memory_mosaics)",
    "parallel": "several processes: ddp (replicated) or fsdp (weights, gradients, optimiser sharded)",
    "activation_checkpointing": "recompute each block's activations in backward instead of keeping them",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file of TrainConfig keys, or a preset name (cpu-d128, paper, ...)",
    )
    parser.add_argument("--out", metavar="DIR", help="run directory: checkpoints, metrics, resolved config")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT: from OUT/last, or the newest intact checkpoint when last is damaged "
        "(starts afresh when OUT has none; metrics are appended)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config key (value read as JSON when it parses)",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra model config field, e.g. key_extractor=gated, pmem_size=512",
    )
    group = parser.add_argument_group("config overrides")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_args":
            continue
        default = f.default
        flags = ["--data", "--train"] if f.name == "train" else ["--" + f.name.replace("_", "-")]
        kwargs = {"dest": f.name, "default": None, "help": _HELP.get(f.name, f"(default {default!r})")}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs.update(nargs=len(default), type=float, metavar="X")
        else:
            kwargs["type"] = type(default)
        group.add_argument(*flags, **kwargs)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config from the saved one (with --resume), --config and the options."""
    base = None
    saved = Path(args.out) / CONFIG_FILE
    if args.resume and saved.is_file():
        base = TrainConfig.from_file(saved)
    if args.config:
        base = TrainConfig.from_file(args.config, base)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    overrides.update(parse_assignment(item) for item in args.set)
    if args.model_arg:
        extra = dict(parse_assignment(item) for item in args.model_arg)
        overrides["model_args"] = {**overrides.get("model_args", (base or TrainConfig()).model_args), **extra}
    return TrainConfig.from_dict(overrides, base)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer, TrainingDiverged

    if not args.out:
        raise ValueError("--out DIR is required (where checkpoints and metrics go)")
    config = resolve_config(args)
    main = os.environ.get("RANK", "0") == "0"
    if main:
        print(config.to_json(), flush=True)
    trainer = Trainer(config, args.out, resume=args.resume)
    try:
        summary = trainer.fit()
    except TrainingDiverged as err:
        if main:
            print(f"mosaics: error: {err}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    if main:
        val = f", valid loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        train = f", train loss {summary['train_loss']:.4f}" if summary["train_loss"] is not None else ""
        speed = f", {summary['tokens_per_s']:,.0f} tokens/s" if summary["tokens_per_s"] else ""
        print(f"done: step {summary['step']}{train}{val}{speed}; checkpoint {summary['checkpoint']}", flush=True)
    return 0
