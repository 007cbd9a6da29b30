"""``mosaics inspect``: an interactive memory explorer, one self-contained HTML page.

    mosaics inspect --checkpoint runs/mosaic --text "Once upon a time..." --out page.html
    mosaics inspect --checkpoint runs/mosaic --file story.txt --out page.html --json data.json
    mosaics inspect --moons runs/moons --out moons.html

The language page shows the text's tokens coloured by loss; hovering or clicking a token shows,
for a chosen layer, memory and head, the positions it retrieved from (arcs), the P-mem slots it
used, the predicted tokens and the logit lens; a table summarises every head. ``--moons`` reads a
``mosaics reproduce moons`` folder (its ``metrics.json``) and shows the retrieval maps and the
heads-by-moon shares of one seed on the validation system. The page needs no network.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "write an interactive HTML page of what each memory retrieves on a text (or the three-moons model)"
MAX_TOP_K = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="language checkpoint folder or run directory")
    source.add_argument("--moons", metavar="DIR", help="a 'mosaics reproduce moons' output folder (metrics.json)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="the text to inspect (with --checkpoint)")
    text.add_argument("--file", metavar="FILE", help="a UTF-8 text file to inspect (with --checkpoint)")
    parser.add_argument("--out", metavar="FILE.html", help="the page to write")
    parser.add_argument("--json", metavar="FILE", help="also (or only) write the page's data as JSON, for notebooks")
    parser.add_argument("--top-k", type=int, default=8, help=f"sources kept per query and head (1..{MAX_TOP_K})")
    view = parser.add_argument_group("the page's first view (language pages)")
    view.add_argument("--token", type=int, default=None, help="token position pinned at first (default: the last)")
    view.add_argument("--layer", type=int, default=0, help="layer shown at first")
    view.add_argument("--head", type=int, default=0, help="head shown at first")
    parser.add_argument("--seed", type=int, default=None, help="--moons: the seed to show (default: the median run)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def check_options(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first bad option (before any work)."""
    if args.out is None and args.json is None:
        raise ValueError("give --out FILE.html and/or --json FILE")
    if args.checkpoint is not None and args.text is None and args.file is None:
        raise ValueError("--checkpoint needs --text TEXT or --file FILE")
    if args.moons is not None and (args.text is not None or args.file is not None):
        raise ValueError("--moons takes no --text or --file (it inspects the validation system)")
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise ValueError(f"--top-k must be in 1..{MAX_TOP_K}, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.text is not None:
        try:
            args.text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("--text is not UTF-8 text; pass UTF-8 (or use --file)") from None
    if args.text == "":
        raise ValueError("--text is empty")


def language_data(args: argparse.Namespace) -> dict:
    import torch

    from ..inspect import inspect
    from ..inspect.export import language_dict
    from ..models import load_pretrained
    from ..training.checkpoint import resolve_checkpoint
    from ._checks import check_saved_model, load_checkpoint_tokenizer

    text = args.text if args.text is not None else Path(args.file).read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{args.file or '--text'} holds no text to inspect")
    ckpt = resolve_checkpoint(args.checkpoint)
    check_saved_model(ckpt)
    model = load_pretrained(ckpt)
    tokenizer = load_checkpoint_tokenizer(ckpt)
    ids = [tokenizer.eot_id, *tokenizer.encode(text)]
    block = getattr(model.config, "block_size", None)
    if block is not None and len(ids) > block:
        raise ValueError(f"the text has {len(ids)} tokens, more than the model's block_size {block}; shorten it")
    config = model.config
    for name, value, limit in (("--token", args.token, len(ids)), ("--layer", args.layer, config.n_layer)):
        if value is not None and not 0 <= value < limit:
            raise ValueError(f"{name} must be in 0..{limit - 1} (this text and model), got {value}")
    if not 0 <= args.head < config.n_head:
        raise ValueError(f"--head must be in 0..{config.n_head - 1}, got {args.head}")
    ins = inspect(model, torch.tensor(ids), top_k=args.top_k)
    listed = {int(i) for layer in ins.layers for i in layer.lens_ids.flatten().tolist()}
    vocab = {i: tokenizer.decode([i]) for i in listed}
    tokens = [tokenizer.decode([i]) for i in ids]
    kind = model.config.model_type
    data = language_dict(ins, tokens, vocab, title=f"{kind} {args.checkpoint}")
    data["subtitle"] = (
        f"{config.n_layer} layers, {config.n_head} heads, d {config.n_embd}; "
        f"{len(ids)} tokens, mean loss {data['mean_loss']}"
    )
    last = len(ids) - 1
    data["initial"] = {"token": last if args.token is None else args.token, "layer": args.layer, "head": args.head}
    return data


def moons_data(args: argparse.Namespace) -> dict:
    """One seed of a ``mosaics reproduce moons`` folder on the validation system's window, as the
    experiment's attention figure: the first combined period and 100 more steps."""
    import json

    from ..experiments.moons.evaluate import make_systems
    from ..experiments.moons.figures import load_memories, median_run, validation_window
    from ..inspect.moons import moons_dict

    path = Path(args.moons) / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    runs = metrics.get("runs") if isinstance(metrics, dict) else None
    if not runs:
        raise ValueError(f"{path} holds no runs; run 'mosaics reproduce moons --out {args.moons}' first")
    if args.seed is None:
        run_ = runs[median_run(runs)]
    else:
        run_ = next((r for r in runs if r["seed"] == args.seed), None)
        if run_ is None:
            raise ValueError(
                f"--seed {args.seed} is not in {path}; its seeds: {', '.join(str(r['seed']) for r in runs)}"
            )
    settings = metrics["settings"]
    system = make_systems(settings["observer"], settings.get("tie_break", "stable"))["validation"]
    n = int(system.combined_period_in_steps()) + 100
    x = validation_window(system)[:, :n]
    title = f"three moons, seed {run_['seed']}, validation system (periods {', '.join(map(str, system.periods))})"
    return moons_dict(
        load_memories(run_), x, system.periods_in_steps(), system.combined_period_in_steps(), args.top_k, title
    )


def run(args: argparse.Namespace) -> int:
    from ..inspect.page import write_json, write_page

    check_options(args)
    if args.threads is not None:
        from ..experiments.common import apply_threads

        apply_threads(args.threads)
    for path in (args.out, args.json):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # before the work: a bad path fails fast
    start = time.perf_counter()
    data = language_data(args) if args.checkpoint is not None else moons_data(args)
    for path, write in ((args.out, write_page), (args.json, write_json)):
        if path is not None:
            size = write(data, path)
            print(f"wrote {path} ({size / 1e6:.2f} MB)", file=sys.stderr)
    print(f"inspect: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
