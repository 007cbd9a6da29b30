"""The Zoology-style MQAR figure (accuracy against model width, one panel per sequence length) and
the summary lines, with the published Zoology numbers.

Published: Zoology (Arora et al. 2023) figure 2, read off the figure in the authors' repository
(``assets/figure2.png``; +- 0.03): 2-layer models trained and tested on one setting each (sequence
length L with P = 4, 8, 16, 64 pairs at L = 64, 128, 256, 512, their ``iclr24_zoology_figure2``
config), the best of four learning rates, vocabulary 8192.
"""

from __future__ import annotations

from pathlib import Path

from ..common import pyplot
from .presets import FIGURE2, HARD, MODELS

MODEL_LABELS = {"mosaic": "Memory Mosaic v1", "mosaic_v2": "Memory Mosaic v2 switches", "gpt": "GPT-2 (attention)"}
COLOURS = {"mosaic": "tab:blue", "mosaic_v2": "tab:purple", "gpt": "tab:orange"}

PUBLISHED_WIDTHS = (64, 128, 256, 512)
# {model: {setting name: accuracy at PUBLISHED_WIDTHS}}
PUBLISHED = {
    "Attention": {"L64-kv4": (0.97,) * 4, "L128-kv8": (0.98,) * 4, "L256-kv16": (0.98,) * 4, "L512-kv64": (0.98,) * 4},
    "Hyena": {
        "L64-kv4": (0.51, 0.74, 0.83, 0.85),
        "L128-kv8": (0.20, 0.62, 0.73, 0.83),
        "L256-kv16": (0.06, 0.14, 0.53, 0.68),
        "L512-kv64": (0.02, 0.04, 0.10, 0.18),
    },
    "RWKV": {
        "L64-kv4": (0.74, 0.92, 0.95, 0.97),
        "L128-kv8": (0.18, 0.50, 0.74, 0.91),
        "L256-kv16": (0.06, 0.07, 0.66, 0.78),
        "L512-kv64": (0.02, 0.03, 0.16, 0.37),
    },
    "H3": {
        "L64-kv4": (0.91, 0.97, 0.97, 0.97),
        "L128-kv8": (0.25, 0.72, 0.89, 0.75),
        "L256-kv16": (0.10, 0.63, 0.61, 0.66),
        "L512-kv64": (0.02, 0.03, 0.03, 0.10),
    },
    "BaseConv": {
        "L64-kv4": (0.69, 0.92, 0.94, 0.97),
        "L128-kv8": (0.37, 0.61, 0.83, 0.95),
        "L256-kv16": (0.15, 0.33, 0.80, 0.91),
        "L512-kv64": (0.02, 0.03, 0.03, 0.70),
    },
}
PUBLISHED_STYLE = {
    "Attention": "tab:green",
    "Hyena": "tab:red",
    "RWKV": "tab:pink",
    "H3": "tab:brown",
    "BaseConv": "tab:cyan",
}


def _name(L: int, P: int) -> str:
    return f"L{L}-kv{P}"


def _rows(tested: list[str]) -> list[list[str]]:
    """Panels: the issue's settings (P = L / 4) in one row and Zoology's figure-2 settings in another,
    as far as they were tested; any other tested settings in a last row."""
    rows = [[_name(L, P) for L, P in pairs if _name(L, P) in tested] for pairs in (HARD, FIGURE2)]
    rest = [name for name in tested if not any(name in row for row in rows)]
    return [row for row in rows + [rest] if row]


def _panel(ax, summary: dict, name: str) -> None:
    """One setting: our models (mean over seeds, bars min..max) and the published curves, if any."""
    ticks = set()
    for model in MODELS:
        per_width = summary.get(model, {})
        widths = [int(w) for w, r in per_width.items() if name in r]
        if widths:
            cells = [per_width[str(w)][name] for w in widths]
            mean = [c["mean"] for c in cells]
            err = [[m - c["min"] for m, c in zip(mean, cells)], [c["max"] - m for m, c in zip(mean, cells)]]
            ax.errorbar(widths, mean, yerr=err, marker="o", capsize=3, color=COLOURS[model], label=MODEL_LABELS[model])
            ticks.update(widths)
    for other, table in PUBLISHED.items():
        if name in table:
            style = dict(marker="s", mfc="none", alpha=0.6, color=PUBLISHED_STYLE[other])
            ax.plot(PUBLISHED_WIDTHS, table[name], "--", label=f"{other} (Zoology fig. 2)", **style)
            ticks.update(PUBLISHED_WIDTHS)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    ax.minorticks_off()
    L, P = name[1:].split("-kv")
    ax.set_title(f"sequence length {L}, {P} pairs", fontsize=9)
    ax.set_xlabel("model width d")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)


def plot_figure(results: dict, path: str | Path) -> bool:
    """Two rows of panels, one per sequence length: the issue's settings (P = L / 4) and Zoology's
    figure-2 settings with the published curves (dashed). Our runs: mean over seeds, bars min..max.
    False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    rows = _rows(list(next((r["by_setting"] for r in results["runs"] if "by_setting" in r), {})))
    if not rows:
        return False
    ncol = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(3.5 * ncol, 3.2 * len(rows)), squeeze=False, sharey=True)
    for row, names in zip(axes, rows):
        for ax in row[len(names) :]:
            ax.set_visible(False)
        for ax, name in zip(row, names):
            _panel(ax, results.get("summary", {}), name)
        row[0].set_ylabel("MQAR accuracy")
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"MQAR, preset {results.get('preset', '')}: accuracy against width", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if len(rows) > 1 else 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown_table(results: dict) -> str:
    """Mean accuracy (min..max over seeds when there are several) per model and width (rows) and
    test setting (columns), with the parameter count and the number of seeds."""
    summary = results.get("summary", {})
    names = list(next((r["by_setting"] for r in results["runs"] if "by_setting" in r), {}))
    lines = [
        "| model | d | params | seeds | " + " | ".join(n.replace("L", "").replace("-kv", "/") for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for model, per_width in summary.items():
        for width, row in per_width.items():
            first = next(iter(row.values()))
            cells = []
            for name in names:
                c = row[name]
                spread = f" ({c['min']:.3f}..{c['max']:.3f})" if len(c["seeds"]) > 1 else ""
                cells.append(f"{c['mean']:.3f}{spread}")
            head = f"| {model} | {width} | {first['params']:,} | {len(first['seeds'])} | "
            lines.append(head + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_lines(results: dict) -> list[str]:
    """One line per model and width (mean accuracy per test setting), then one per diverged run."""
    lines = []
    for model, per_width in results.get("summary", {}).items():
        for width, row in per_width.items():
            cells = ", ".join(f"{name} {c['mean']:.3f}" for name, c in row.items())
            lines.append(f"{model:9s} d={width:>4s}: {cells}")
    for run in results["runs"]:
        if run.get("diverged"):
            lines.append(f"{run['model']:9s} d={run['width']:>4d}: seed {run['seed']} diverged ({run['diverged']})")
    return lines
