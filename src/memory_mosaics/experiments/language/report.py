"""Figures 7 and 8 and the generations table of the language experiment."""

from __future__ import annotations

from pathlib import Path

import torch

from ..common import pyplot
from .evaluate import PROMPTS

KINDS = ("mosaic", "gpt", "mosaic-v2")
COLORS = {"mosaic": "tab:red", "gpt": "tab:blue", "mosaic-v2": "tab:green"}


def figures(results: dict, depths: list[int], out: Path) -> None:
    """figure7.png (loss against tokens, one panel per depth) and figure8.png (loss by position)."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths):
        for kind in KINDS:
            entry = results.get(f"{kind}-{depth}")
            if entry is None:
                continue
            for split, style in (("train", "-"), ("valid", "--")):
                tokens, losses = zip(*entry["curves"][split]) if entry["curves"][split] else ((), ())
                ax.plot([t / 1e6 for t in tokens], losses, style, color=COLORS[kind], label=f"{kind} {split}")
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("training tokens (millions)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats/token)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Figure 7 (CPU-scale models): training and validation loss, Mosaic vs GPT-2")
    fig.tight_layout()
    fig.savefig(out / "figure7.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(depths), figsize=(4.2 * len(depths), 6.4), squeeze=False)
    for col, depth in enumerate(depths):
        for row, split in enumerate(("ood", "valid")):
            ax = axes[row][col]
            for kind in KINDS:
                entry = results.get(f"{kind}-{depth}")
                if entry is None:
                    continue
                for key, style, suffix in ((split, "-", ""), (f"{split}_long", ":", " (4x context)")):
                    if key in entry:
                        curve = torch.tensor(entry[key]["loss_by_position"])
                        smooth = torch.nn.functional.avg_pool1d(curve[None, None], 9, 1, 4, count_include_pad=False)[
                            0, 0
                        ]
                        ax.plot(range(1, len(curve) + 1), smooth, style, color=COLORS[kind], label=kind + suffix)
            ax.set_xscale("log")
            ax.set_title(f"depth {depth}, {'Wikipedia (OOD)' if split == 'ood' else 'TinyStories valid'}", fontsize=9)
            ax.set_xlabel("token position in window")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7)
    axes[0][0].set_ylabel("mean loss")
    axes[1][0].set_ylabel("mean loss")
    fig.suptitle("Figure 8 (CPU-scale models): loss by position, trained on TinyStories")
    fig.tight_layout()
    fig.savefig(out / "figure8.png", dpi=110)
    plt.close(fig)


def generations_markdown(results: dict, depths: list[int]) -> str:
    lines = ["# Generations (tables 4-5, CPU scale)", ""]
    for mode in ("greedy", "sampled"):
        for i, prompt in enumerate(PROMPTS):
            lines += [f'## {mode}: "{prompt}"', "", "| model | continuation |", "|---|---|"]
            for depth in depths:
                for kind in KINDS:
                    entry = results.get(f"{kind}-{depth}")
                    if entry is not None:
                        text = entry["generations"][mode][i].replace("|", "\\|")
                        lines.append(f"| {kind} depth {depth} | {text} |")
            lines.append("")
    return "\n".join(lines)
