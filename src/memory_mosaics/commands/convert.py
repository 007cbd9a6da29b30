"""``mosaics convert``: a package checkpoint <-> a Hugging Face folder (the ``hf`` extra).

    mosaics convert runs/lang/last hf/mosaic-d128        # -> HF folder (AutoModelForCausalLM, remote code)
    mosaics convert hf/mosaic-d128 ckpt/mosaic-d128       # -> package checkpoint
    mosaics convert owner/name ckpt/                     # a Hub id is downloaded first

The direction follows the source (an HF folder's config.json records ``transformers_version``);
``--to`` forces it. Weights are copied bit for bit, the tokenizer travels with them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "convert"
HELP = "convert a checkpoint to a Hugging Face folder or back (needs the hf extra)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="package checkpoint, HF folder, run directory or Hub id")
    parser.add_argument("out", metavar="OUT", help="folder to write (must not exist, or be empty)")
    parser.add_argument("--to", choices=("hf", "package"), help="direction (default: the other format than SRC's)")


def run(args: argparse.Namespace) -> int:
    from ..training.checkpoint import resolve_checkpoint
    from ._checks import check_saved_model

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty folder; choose another OUT")
    try:
        from ..hf import convert, hub
    except ImportError:
        raise ValueError("mosaics convert needs transformers: pip install 'memory-mosaics[hf]'") from None
    source = hub.resolve(args.source)
    if not convert.is_hf_folder(source):
        source = resolve_checkpoint(source)
    check_saved_model(source)
    is_hf = convert.is_hf_folder(source)
    to = args.to or ("package" if is_hf else "hf")
    if (to == "hf") == is_hf:
        raise ValueError(f"{source} is already a {'Hugging Face folder' if is_hf else 'package checkpoint'}")
    if to == "hf":
        convert.to_hf(source, out)
    else:
        convert.from_hf(source, out)
    print(f"wrote {out} ({'Hugging Face folder' if to == 'hf' else 'package checkpoint'})")
    return 0
