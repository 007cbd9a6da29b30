"""RegBench in-context language learning (Memory Mosaics figure 9): ``mosaics reproduce regbench``.

    mosaics reproduce regbench [--preset cpu|paper] [--num-train N [N ...]] [--epochs E] [--num-val V]
                               [--data-seed S] [--grid] [--grid-spec SPEC] [--resume]
                               [common flags: --seeds --models --out --threads --device --progress --quick]

Trains the registered ``mosaic`` and ``gpt`` models on N random regular languages (one fixed prompt
each, :mod:`memory_mosaics.data.regbench`), keeps the checkpoint with the best validation loss and
scores it on the fixed test set with :mod:`memory_mosaics.eval.regbench` (accuracy of the argmax and
total variation distance to the true next-token distribution, pooled over all non-pad positions).

Protocol (docs/regbench.md, "Protocol and presets"; the authors' seq_icl harness, :mod:`.train`):
next-token cross-entropy (separator and pad labels ignored); batches of 32 prompts reshuffled every
epoch, padded per batch; AdamW with betas (0.9, 0.999) over ONE parameter group, so weight decay
applies to every parameter; the learning rate of every step from timm's ``CosineLRScheduler`` with
``warmup_prefix=False`` (linear warm-up from 1e-6 over the first ceil(epochs / 10) epochs, a cosine to
0.1 x lr computed from step 0); gradient norm clipped at 1.0; validation loss after every epoch; the
best one's weights are tested. Every preset uses this protocol.

Presets (:mod:`.presets`):

* ``paper``: N in {100, 500, 1000, 2500, 40000}, 200 epochs, the paper's configs (Mosaic d 128,
  8 heads, 2 layers, P-mem 7d/2, dropout 0.05, lr 5e-4; transformer d 128, 8 layers, 2 heads,
  dropout 0.1), 500 validation environments. Needs a GPU.
* ``cpu``: N in {100, 500, 1000}; the same 224 optimiser steps for every N (56 / 14 / 7 epochs),
  2-layer models of width 64 with the same 12 d^2 weights per block, 4 Mosaic heads and no dropout
  on the retrieval weights (both for CPU speed), validation on the first 100 validation
  environments; lr 4e-3 (Mosaic) and 1e-3 (transformer), chosen by validation loss in a pilot at
  N = 100 (docs/regbench.md).
* ``quick`` (``--quick``): tiny models, N = 16, 2 epochs (tests).

``--grid`` runs a small search per model and N (first seed only) over the preset's grid (or
``--grid-spec``), selects the point with the best validation loss, and runs the remaining seeds
with it; test metrics never enter the selection (:mod:`.runs`). A run that diverges is reported on
one line and recorded as diverged; the others go on.

Outputs in ``--out``: ``results.json`` (:mod:`.results`, written after every run; ``--resume`` skips
runs already in it) and ``figure9.png`` (:mod:`.report`: accuracy and TVD against N, log x-axis,
with the published Mosaic and transformer numbers and the in-context 3-gram).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ...data.regbench import make_splits
from ...eval.regbench import baselines, generator_stats
from ..common import add_common_arguments, apply_threads, resolve_device
from .presets import MODELS, PRESETS
from .report import plot_figure, published_json, summary_lines
from .results import Results, read_previous
from .runs import Runner, Splits
from .settings import Settings, resolve

EXPERIMENT = "regbench"
HELP = "RegBench in-context language learning (figure 9): accuracy and TVD against the number of training automata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=MODELS, default_seeds=None)  # None: the preset's seeds
    cpu = PRESETS["cpu"]
    parser.add_argument(
        "--preset",
        choices=("cpu", "paper"),
        help=f"cpu (the default): N<={max(cpu.num_train)}, {cpu.epochs.steps} steps per run, width-64 models; "
        "paper: the paper's protocol (GPU). --seeds, --num-train, --epochs and --num-val "
        "default to the preset's",
    )
    parser.add_argument(
        "--num-train", type=int, nargs="+", metavar="N", help="numbers of training automata (default: the preset's)"
    )
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the environments (default 0, as the reference)"
    )
    parser.add_argument("--epochs", type=int, help="epochs for every N (default: the preset's)")
    parser.add_argument("--num-val", type=int, help="validation environments used (default: the preset's)")
    parser.add_argument(
        "--grid", action="store_true", help="select hyper-parameters on validation over the preset's grid"
    )
    parser.add_argument("--grid-spec", help="grid for --grid, e.g. 'lr=5e-4,1e-3;weight_decay=0.01,0.1'")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.json")


def load_splits(settings: Settings, device: torch.device) -> Splits:
    """The environments: the first max(N) training ones, ``num_val`` validation ones (of 500 generated,
    so that they do not depend on ``--num-val``; quick: of ``num_val``) and the test set."""
    tic = time.perf_counter()
    num_val = 500 if settings.preset != "quick" else settings.num_val
    made = make_splits(max(settings.num_train), seed=settings.data_seed, num_test=settings.num_test, num_val=num_val)
    splits = Splits(made["train"], made["validation"][: settings.num_val], made["test"])
    print(
        f"regbench: {len(splits.train)} train / {len(splits.val)} validation / {len(splits.test)} test "
        f"environments (data seed {settings.data_seed}, {time.perf_counter() - tic:.1f}s); device {device}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    return splits


def run(args: argparse.Namespace) -> int:
    settings = resolve(args)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    if args.resume:
        read_previous(out / "results.json")  # a damaged file is named now, before any work
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(settings, device)
    baseline_scores = baselines(splits.test)
    print(
        "baselines on the test set: "
        + ", ".join(f"{k} {v['accuracy']:.3f}/{v['tvd']:.3f}" for k, v in baseline_scores.items()),
        flush=True,
    )
    header = {
        "experiment": EXPERIMENT,
        "preset": settings.preset,
        "settings": settings.to_json(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "generator_stats": {"test": generator_stats(splits.test), "train": generator_stats(splits.train)},
        "baselines": baseline_scores,
        "published": published_json(),
    }
    results = Results.start(out / "results.json", header, args.resume)
    Runner(settings, splits, results, device, args.progress).run_all()
    figure = out / "figure9.png"
    print(f"wrote {results.path}" + (f" and {figure}" if plot_figure(results.data, figure) else ""))
    for line in summary_lines(results.data):
        print(line)
    return 0
