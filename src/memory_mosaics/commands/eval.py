"""``mosaics eval``: loss, perplexity and mean loss per token position of a checkpoint on a corpus.

    mosaics eval --checkpoint runs/mosaic --data shared:ood/wikipedia.txt --out results/wiki.json

Writes ``{loss, perplexity, loss_by_position, windows, tokens, context, ...}`` to ``--out`` and a
plot of the loss by position next to it (``.png``) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMAND = "eval"
HELP = "evaluate a checkpoint: loss, perplexity and loss by token position (JSON + plot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="checkpoint folder or run directory (uses its 'last')"
    )
    parser.add_argument(
        "--data", required=True, metavar="PATH", help="corpus to evaluate on (file, folder, .jsonl or shared:PATH)"
    )
    parser.add_argument("--out", required=True, metavar="FILE.json", help="where to write the results")
    parser.add_argument("--context", type=int, help="window length (default: the training context)")
    parser.add_argument("--max-windows", type=int, default=0, help="evenly spaced windows to use (0: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16")
    parser.add_argument("--cache-dir", default="", help="token cache root")
    parser.add_argument("--separator", default="eot", help="document separator of text files: eot or blank")
    parser.add_argument("--text-field", default="text", help="field of .jsonl records")
    parser.add_argument("--plot", metavar="FILE", help="loss-by-position plot (default: --out with .png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_options(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first out-of-range option (before any work)."""
    if args.context is not None and args.context < 1:
        raise ValueError(f"--context must be >= 1, got {args.context}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_windows < 0:
        raise ValueError(f"--max-windows must be >= 0 (0: all), got {args.max_windows}")
    if args.dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown --dtype {args.dtype!r}; expected auto, fp32, bf16 or fp16")


def saved_context(path: Path) -> int:
    """The training context of a checkpoint's ``train_config.json``; a damaged file is named."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass --context N or use another checkpoint") from None
    context = saved.get("context") if isinstance(saved, dict) else None
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise ValueError(f"{path} has no valid 'context' (got {context!r}); pass --context N or use another checkpoint")
    return context


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.sources import open_corpus, resolve_cache_dir
    from ..eval.language import evaluate, plot_loss_by_position
    from ..models import load_pretrained
    from ..training.checkpoint import resolve_checkpoint
    from ..training.config import CONFIG_FILE
    from ..training.distributed import resolve_device
    from ..training.trainer import amp_dtype
    from ._checks import check_forward_fits, check_saved_model, load_checkpoint_tokenizer

    check_options(args)
    ckpt = resolve_checkpoint(args.checkpoint)
    check_saved_model(ckpt)
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must name a .json file, got {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name a .json file")
    out.parent.mkdir(parents=True, exist_ok=True)  # a folder that lies under a file fails now, not after the work
    model = load_pretrained(ckpt)
    tokenizer = load_checkpoint_tokenizer(ckpt)
    context = args.context
    if context is None and (ckpt / CONFIG_FILE).is_file():
        context = saved_context(ckpt / CONFIG_FILE)
    if context is None:
        context = getattr(model.config, "block_size", None)
    if context is None:
        raise ValueError("no training config in the checkpoint: pass --context N")
    if context > getattr(model.config, "block_size", context):
        raise ValueError(f"--context {context} exceeds the model's block_size {model.config.block_size}")
    check_forward_fits(
        model.config,
        args.batch_size * context,
        args.batch_size * context,
        f"a batch of {args.batch_size} windows of {context} tokens",
        "use a smaller --batch-size or --context",
    )
    device = resolve_device(args.device)
    model.to(device)
    corpus = open_corpus(
        args.data,
        tokenizer,
        resolve_cache_dir(args.cache_dir),
        args.separator,
        args.text_field,
        progress=not args.no_progress,
    )
    result = evaluate(
        model,
        corpus,
        context,
        max_windows=args.max_windows or None,
        batch_size=args.batch_size,
        device=device,
        amp_dtype=amp_dtype(args.dtype, device),
        progress=not args.no_progress,
    )
    result = {
        **result,
        "context": context,
        "checkpoint": str(ckpt),
        "data": args.data,
        "model_type": model.config.model_type,
        "parameters": model.num_params(),
        "dtype": str(amp_dtype(args.dtype, device) or torch.float32).replace("torch.", ""),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    label = f"{model.config.model_type} ({ckpt.parent.name}/{ckpt.name})"
    plotted = plot_loss_by_position({label: result["loss_by_position"]}, plot, title=f"{Path(args.data).name}")
    print(
        f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  over {result['windows']} windows "
        f"of {context} tokens -> {out}" + (f", {plot}" if plotted else "")
    )
    return 0
