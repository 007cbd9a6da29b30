"""Multi-query associative recall (Zoology's MQAR): ``mosaics reproduce mqar``.

    mosaics reproduce mqar [--preset cpu|paper] [--widths D [D ...]] [--epochs E] [--num-test N]
                           [--data-seed S] [--lr [MODEL=]LR ...] [--resume]
                           [common flags: --seeds --models --out --threads --device --progress --quick]

For every width, model (``mosaic``: v1 Memory Mosaic, ``mosaic_v2``: the v2 switches, ``gpt``: GPT-2;
2 layers, equal block weights, :mod:`.presets`) and seed: train one model on the preset's mixture
of MQAR settings (:mod:`memory_mosaics.data.mqar`, Zoology's reference mixture) and test it on the
fixed test set of every test setting (:mod:`.train`): the argmax accuracy over the queried positions.

Presets (:mod:`.presets`, docs/mqar.md for the costs):

* ``cpu``: widths 32, 64, 128, seeds 0 and 1; 1/25 of Zoology's training examples for one epoch
  (batches of 32); test settings L/P = 64/16, 128/32, 256/64, 512/128 and Zoology's figure-2
  settings 64/4, 128/8, 256/16, 512/64, 250 examples each.
* ``paper``: widths 64 .. 512, Zoology's full mixture (180k examples), 32 epochs of batches of 256,
  1000 test examples per setting. Needs a GPU.
* ``quick`` (``--quick``): a tiny vocabulary and model (tests).

Outputs in ``--out``: ``results.json`` (:mod:`.results`, written after every run; ``--resume``
reuses runs already in it), ``table.md`` (mean accuracy per model, width and test setting) and
``mqar.png`` (:mod:`.report`: accuracy against width, one panel per sequence length, with the
published Zoology curves).

Python API (used by the ablation study): :func:`.train.train_one` (a :class:`.presets.ModelSpec`, a
:class:`.presets.TrainSpec`, a seed, a device -> a record with ``accuracy``) and
:func:`.presets.model_spec`, :func:`.presets.single_setting`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ...io import atomic_write_text
from ..common import add_common_arguments, apply_threads, resolve_device
from .presets import MODELS
from .report import PUBLISHED, markdown_table, plot_figure, summary_lines
from .results import Results
from .runs import run_all
from .settings import resolve

EXPERIMENT = "mqar"
HELP = "multi-query associative recall (Zoology's MQAR): accuracy against model width per sequence length"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=MODELS, default_seeds=None)  # None: the preset's seeds
    parser.add_argument(
        "--preset",
        choices=("cpu", "paper"),
        default="cpu",
        help="cpu: widths 32-128, 2 seeds, a short budget (about 20 min of CPU on one thread); "
        "paper: Zoology's budget, widths 64-512 (GPU). --seeds, --widths, --epochs and --num-test "
        "default to the preset's (default: %(default)s)",
    )
    parser.add_argument("--widths", type=int, nargs="+", metavar="D", help="model widths (default: the preset's)")
    parser.add_argument("--epochs", type=int, help="passes over the training mixture (default: the preset's)")
    parser.add_argument("--num-test", type=int, help="test examples per setting (default: the preset's)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the training sets (default 0)")
    parser.add_argument(
        "--lr",
        nargs="+",
        metavar="[MODEL=]LR",
        help="learning rates, e.g. mosaic=3e-3 gpt=1e-3 (default: the preset's)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse runs already in OUT/results.json")


def run(args: argparse.Namespace) -> int:
    settings = resolve(args)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {
        "experiment": EXPERIMENT,
        "preset": settings.preset,
        "settings": settings.to_json(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "published": {"source": "Zoology figure 2 (read off, +-0.03)", "widths": [64, 128, 256, 512], **PUBLISHED},
    }
    print(
        f"mqar: preset {settings.preset}, models {' '.join(settings.models)}, widths {settings.widths}, "
        f"seeds {settings.seeds}; device {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    results = Results.start(out / "results.json", header, args.resume)
    run_all(settings, results, device, args.progress)
    figure, table = out / "mqar.png", out / "table.md"
    atomic_write_text(table, markdown_table(results.data))
    print(f"wrote {results.path}, {table}" + (f" and {figure}" if plot_figure(results.data, figure) else ""))
    for line in summary_lines(results.data):
        print(line)
    return 0
