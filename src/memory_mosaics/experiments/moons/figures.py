"""The figures: ``error_vs_context.png``, ``error_vs_context_train.png`` and ``drift.png`` (every
seed), ``weights.png`` (every seed), and for the seed whose last model has the median validation
error ``trajectories.png`` and ``attention.png``. Drawn from ``metrics.json`` alone (``--replot``);
without matplotlib, one line says so and nothing is drawn."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.moons import WINDOW, MoonSystem
from ...layers import ContextualMemory
from ...models.moons import generate, moons_memory
from ..common import pyplot
from .settings import EVAL_SEED, MODELS

COLORS = {"1head": "tab:blue", "3heads": "tab:orange"}
LABELS = {"1head": "1 head", "3heads": "3 heads"}
Y_MAX = 1.5  # error axes are cut there: a generation that blows up would hide everything else
TRAJECTORY_CONTEXT = 150  # between the validation system's longest period (88.9) and combined period (266.7)


def load_memories(run: dict) -> dict[str, ContextualMemory]:
    """The trained memories of one run (one seed) of metrics.json, rebuilt from their weights."""
    memories = {}
    for name, result in run["models"].items():
        memories[name] = moons_memory(MODELS[name]).eval()
        memories[name].load_state_dict({k: torch.tensor(v) for k, v in result["weights"].items()})
    return memories


def median_run(runs: list[dict]) -> int:
    """Index of the run whose last model has the median validation "between" error (figures of one seed)."""
    name = list(runs[0]["models"])[-1]
    errors = [run["models"][name]["summary"]["validation"]["between_periods"] or 0.0 for run in runs]
    return sorted(range(len(runs)), key=errors.__getitem__)[len(runs) // 2]


def save(plt, fig, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def mark_periods(ax, system: MoonSystem, vertical: bool = True) -> None:
    """Individual periods (grey, dotted) and the combined period (red, dashed), in steps."""
    line = ax.axvline if vertical else ax.axhline
    for p in system.periods_in_steps():
        line(p, color="grey", ls=":", lw=1)
    line(system.combined_period_in_steps(), color="red", ls="--", lw=1)


def title(system: MoonSystem, label: str) -> str:
    return f"{label}: periods {', '.join(f'{p:g}' for p in system.periods)}"


def validation_window(system: MoonSystem) -> torch.Tensor:
    """The one window (1, WINDOW, 6) of the trajectory and attention figures."""
    return system.windows(1, WINDOW, torch.Generator().manual_seed(EVAL_SEED))[0]


def plot_errors(ax, metrics: dict, split: str, index: int | None, system: MoonSystem) -> None:
    """Error vs context for every model: thin line per seed, thick median over seeds."""
    contexts = metrics["contexts"]
    for name in metrics["runs"][0]["models"]:
        curves = []
        for run_ in metrics["runs"]:
            curve = run_["models"][name]["curves"][split]
            curves.append(curve if index is None else curve[index])
        median = torch.tensor(curves).quantile(0.5, dim=0).tolist()  # a diverging seed would swamp a mean
        for c in curves:
            ax.plot(contexts, c, color=COLORS[name], lw=0.5, alpha=0.4)
        ax.plot(contexts, median, color=COLORS[name], lw=2, label=LABELS[name])
    mark_periods(ax, system)
    ax.set_ylim(0, min(ax.get_ylim()[1], Y_MAX))
    ax.set_xlabel("context length (steps)")


def representative_train_system(systems: list[MoonSystem]) -> int:
    """The training system with the longest gap between its longest and combined periods."""
    gaps = [s.combined_period_in_steps() - max(s.periods_in_steps()) for s in systems]
    return gaps.index(max(gaps))


def plot_error_figures(plt, out: Path, metrics: dict, systems: dict) -> None:
    i = representative_train_system(systems["train"])
    panels = [
        ("train", i, systems["train"][i]),
        ("validation", None, systems["validation"]),
        ("unseen", None, systems["unseen"]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, (split, index, system) in zip(axes, panels):
        plot_errors(ax, metrics, split, index, system)
        ax.set_title(title(system, split), fontsize=10)
    axes[0].set_ylabel("mean |generated - truth|, 25 steps")
    axes[0].legend()
    save(plt, fig, out / "error_vs_context.png", 80)

    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharey=True)
    for j, (ax, system) in enumerate(zip(axes.flat, systems["train"])):
        plot_errors(ax, metrics, "train", j, system)
        ax.set_title(title(system, "train"), fontsize=9)
    axes[0, 0].legend()
    save(plt, fig, out / "error_vs_context_train.png", 70)


def plot_drift(plt, out: Path, metrics: dict) -> None:
    """Error at each generated step j (median over seeds of the mean over the contexts of a region)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    steps = list(range(1, metrics["settings"]["gen_steps"] + 1))
    for ax, split in zip(axes, ("validation", "unseen")):
        for name in metrics["runs"][0]["models"]:
            for region, style in (("between_periods", "-"), ("after_combined", "--")):
                per_seed = [run_["models"][name]["step_errors"][split][region] for run_ in metrics["runs"]]
                if per_seed[0] is not None:
                    median = torch.tensor(per_seed).quantile(0.5, dim=0).tolist()
                    ax.plot(
                        steps, median, style, color=COLORS[name], label=f"{LABELS[name]}, {region.replace('_', ' ')}"
                    )
        ax.set_title(split, fontsize=10)
        ax.set_xlabel("generated step j (1 = one-step prediction)")
        ax.set_ylim(0, min(ax.get_ylim()[1], Y_MAX))
    axes[0].set_ylabel("mean |generated - truth|")
    axes[0].legend(fontsize=7)
    save(plt, fig, out / "drift.png", 80)


@torch.no_grad()
def plot_trajectories(plt, out: Path, memories: dict, system: MoonSystem, seed: int) -> None:
    """Re coordinate of each moon: truth, teacher-forced prediction, generation after TRAJECTORY_CONTEXT."""
    x = validation_window(system)
    c, horizon = TRAJECTORY_CONTEXT, 2 * TRAJECTORY_CONTEXT
    steps, truth = torch.arange(c + horizon).numpy(), x[0].numpy()
    fig, axes = plt.subplots(len(memories), 3, figsize=(13, 2.4 * len(memories)), sharey=True, squeeze=False)
    for row, (name, memory) in enumerate(memories.items()):
        forced = memory(x)[0].numpy()  # y_hat_t predicts x_{t+1}
        gen = generate(memory, x[:, :c], horizon)[0].numpy()  # predicts x_c .. x_{c+horizon-1}
        for moon, ax in enumerate(axes[row]):
            ax.plot(steps, truth[: c + horizon, 2 * moon], "k-", lw=1, label="truth")
            ax.plot(steps[1:], forced[: c + horizon - 1, 2 * moon], "b.", ms=2, label="teacher-forced")
            ax.plot(steps[c:], gen[:, 2 * moon], "r-", lw=1, label="generated")
            ax.axvline(c, color="red", lw=0.5)
            ax.set_title(f"{LABELS[name]}, moon {moon + 1} (period {system.apparent_periods[moon]:.3g})", fontsize=9)
    axes[0, 0].set_ylim(-Y_MAX, Y_MAX)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title(system, "validation") + f"; generation from context {c}; seed {seed}", fontsize=10)
    save(plt, fig, out / "trajectories.png", 70)


@torch.no_grad()
def plot_attention(plt, out: Path, memories: dict, system: MoonSystem, seed: int) -> None:
    """Retrieval weights of every head on one validation window, first combined period + 100 steps."""
    x = validation_window(system)
    n = int(system.combined_period_in_steps()) + 100
    maps = [(name, h, w) for name, m in memories.items() for h, w in enumerate(m.attention(x[:, :n])[0])]
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.4), squeeze=False)
    for ax, (name, h, w) in zip(axes[0], maps):
        ax.imshow(w.sqrt().numpy(), cmap="viridis", interpolation="nearest")  # sqrt: make weak weights visible
        mark_periods(ax, system, vertical=False)
        ax.set_title(f"{LABELS[name]}, head {h + 1}", fontsize=9)
        ax.set_xlabel("stored pair s")
    axes[0, 0].set_ylabel("query t")
    fig.suptitle(f"seed {seed}: sqrt of retrieval weights; periods (grey), combined period (red)", fontsize=9)
    save(plt, fig, out / "attention.png", 70)


@torch.no_grad()
def plot_weights(plt, out: Path, runs: list[dict]) -> None:
    """|w| of the 3x3 complex weights W_phi (keys), W_psi (values), W_z (output); one row per seed."""
    names = list(runs[0]["models"])
    fig, axes = plt.subplots(len(runs), 3 * len(names), figsize=(2 * 3 * len(names), 2.1 * len(runs)), squeeze=False)
    for row, run_ in enumerate(runs):
        for col, (name, m) in enumerate(load_memories(run_).items()):
            layers = {"W_phi": m.key.proj, "W_psi": m.value.proj, "W_z": m.c_proj}
            for ax, (label, layer) in zip(axes[row, 3 * col :], layers.items()):
                w = layer.magnitude()
                ax.imshow(w.numpy(), cmap="viridis", vmin=0)
                ax.set_title(f"seed {run_['seed']} {LABELS[name]} |{label}| max {w.max():.2f}", fontsize=7)
                ax.set_xticks(range(3), [f"m{i + 1}" for i in range(3)], fontsize=6)
                ax.set_yticks(range(3), [f"o{i + 1}" for i in range(3)], fontsize=6)
    fig.suptitle(
        "|complex weights|: columns = input moons (m), rows = outputs (o; for 3 heads, o_h = head h)", fontsize=9
    )
    save(plt, fig, out / "weights.png", 70)


def plot_all(out: Path, metrics: dict, systems: dict) -> None:
    """Every figure: error curves of all seeds, then one seed (the median) in detail, weights of all seeds."""
    plt = pyplot()
    if plt is None:
        return
    plot_error_figures(plt, out, metrics, systems)
    plot_drift(plt, out, metrics)
    run_ = metrics["runs"][median_run(metrics["runs"])]
    memories = load_memories(run_)
    plot_trajectories(plt, out, memories, systems["validation"], run_["seed"])
    plot_attention(plt, out, memories, systems["validation"], run_["seed"])
    plot_weights(plt, out, metrics["runs"])
