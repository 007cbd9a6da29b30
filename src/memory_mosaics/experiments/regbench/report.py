"""Figure 9 of a RegBench experiment and its summary lines, with the published numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common import pyplot
from .presets import MODELS

MODEL_LABELS = {"mosaic": "Memory Mosaic", "gpt": "Transformer (GPT-2)"}
COLOURS = {"mosaic": "tab:blue", "gpt": "tab:orange"}

# Published numbers (docs/regbench.md, read off the Memory Mosaics figure 9).
PUBLISHED = {
    "mosaic": {
        "accuracy": {100: 0.925, 500: 0.929, 1000: 0.934, 2500: 0.942, 40000: 0.96},
        "tvd": {100: 0.568, 500: 0.255, 1000: 0.215, 2500: 0.185, 40000: 0.122},
    },
    "gpt": {
        "accuracy": {100: 0.523, 500: 0.543, 1000: 0.533, 2500: 0.925, 40000: 0.951},
        "tvd": {100: 0.683, 500: 0.643, 1000: 0.630, 2500: 0.232, 40000: 0.144},
    },
}


def published_json() -> dict:
    """:data:`PUBLISHED` with string keys, as results.json records it."""
    return {k: {m: {str(n): v for n, v in d.items()} for m, d in pub.items()} for k, pub in PUBLISHED.items()}


def plot_figure(results: dict, path: str | Path) -> bool:
    """Figure 9: accuracy and TVD against N (log x) for our runs (mean, min-max bars), the published
    Mosaic and transformer numbers (dashed) and the in-context 3-gram (dotted). False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    titles = ("accuracy (higher is better)", "total variation distance (lower is better)")
    for ax, metric, title in zip(axes, ("accuracy", "tvd"), titles):
        for kind in MODELS:
            pub = PUBLISHED[kind][metric]
            ax.plot(
                list(pub),
                list(pub.values()),
                "--",
                marker="s",
                mfc="none",
                color=COLOURS[kind],
                alpha=0.6,
                label=f"{MODEL_LABELS[kind]}, published",
            )
            rows = results.get("summary", {}).get(kind, {})
            if rows:
                ns = [int(n) for n in rows]
                mean = np.array([rows[n][f"{metric}_mean"] for n in rows])
                lo = mean - np.array([rows[n][f"{metric}_min"] for n in rows])
                hi = np.array([rows[n][f"{metric}_max"] for n in rows]) - mean
                ax.errorbar(
                    ns,
                    mean,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    color=COLOURS[kind],
                    label=f"{MODEL_LABELS[kind]}, ours ({rows[str(ns[0])]['params'] / 1e3:.0f}k params)",
                )
        gram = results.get("baselines", {}).get("3-gram")
        if gram:
            ax.axhline(gram[metric], color="grey", ls=":", label="in-context 3-gram")
        ax.set_xscale("log")
        ax.set_xlabel("number of training automata N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    preset = results.get("preset", "")
    fig.suptitle(f"RegBench (figure 9), preset {preset}: mean over seeds, bars = min..max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summary_lines(results: dict) -> list[str]:
    """One line per model and N (mean +- std over seeds), then one per diverged run."""
    lines = []
    for kind, rows in results["summary"].items():
        for n, row in rows.items():
            lines.append(
                f"{kind:6s} N={n:>5s}: accuracy {row['accuracy_mean']:.3f} +- {row['accuracy_std']:.3f}, "
                f"tvd {row['tvd_mean']:.3f} +- {row['tvd_std']:.3f} ({len(row['seeds'])} seeds, "
                f"{row['params']} params)"
            )
    for run in results["runs"]:
        if run.get("diverged"):
            lines.append(f"{run['model']:6s} N={run['num_train']:>5d}: seed {run['seed']} diverged ({run['diverged']})")
    return lines
