"""Evaluation of any :class:`~memory_mosaics.models.LanguageModel` over fixed windows of a corpus.

The windows are :meth:`TokenizedCorpus.eval_windows`: non-overlapping ``context``-token slices of
the token stream (an evenly spaced subset when ``max_windows`` is given), so every model sees the
same tokens. Reported: mean next-token loss (nats), perplexity, and the mean loss at each position
of the window (the in-context learning curve of the paper's figure 8).
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.tokenized import TokenizedCorpus
from ..plotting import pyplot
from ..training import distributed


@torch.no_grad()
def position_loss_sums(
    model: nn.Module,
    corpus: TokenizedCorpus,
    context: int,
    max_windows: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> tuple[torch.Tensor, int]:
    """Sum over windows of the loss at each position, (context,) float64, and the number of windows.

    ``amp_dtype`` (bf16/fp16) runs the forward pass under autocast. With ``world_size`` > 1 this
    process takes every ``world_size``-th batch, starting at ``rank``. ``progress``: a progress bar
    over the batches (long evaluations).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(context, dtype=torch.float64, device=device)
    count = 0
    windows = min(corpus.num_eval_windows(context), max_windows or math.inf)
    batches = tqdm(
        corpus.eval_windows(context, max_windows or None, batch_size),
        total=math.ceil(windows / batch_size),
        desc="evaluating",
        unit="batch",
        disable=not progress,
        mininterval=2,
    )
    try:
        for i, (x, y) in enumerate(batches):
            if i % world_size != rank:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
            sums += loss.sum(0).double()
            count += x.shape[0]
    finally:
        batches.close()
        model.train(was_training)
    return sums, count


def summarize(sums: torch.Tensor, count: int) -> dict[str, Any]:
    """``{loss, perplexity, loss_by_position, windows, tokens}`` from :func:`position_loss_sums`."""
    if count == 0:
        raise ValueError("no evaluation windows: the corpus is shorter than one context")
    by_position = (sums / count).cpu()
    loss = float(by_position.mean())
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "loss_by_position": by_position.tolist(),
        "windows": count,
        "tokens": count * len(by_position),
    }


def evaluate(
    model: nn.Module, corpus: TokenizedCorpus, context: int, dist: distributed.Dist | None = None, **options
) -> dict[str, Any]:
    """Loss, perplexity and loss by position over the corpus's windows, shared out over ``dist``'s
    processes; ``options`` (max_windows, batch_size, device, amp_dtype) as :func:`position_loss_sums`."""
    rank, world = (dist.rank, dist.world_size) if dist else (0, 1)
    sums, count = position_loss_sums(model, corpus, context, **options, rank=rank, world_size=world)
    packed = distributed.all_reduce_sum(torch.cat([sums, sums.new_tensor([count])]))
    return summarize(packed[:-1], int(packed[-1]))


def plot_loss_by_position(curves: dict[str, list[float]], path: str | os.PathLike, title: str = "") -> bool:
    """Plot each ``label -> loss_by_position`` curve into ``path``; False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set_xlabel("token position in the window")
    ax.set_ylabel("mean loss (nats)")
    ax.set_xscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
