"""``mosaics reproduce moons``: the three-moons experiment (spec 4.1, paper section 3, figures 3-5).

For each seed, train the 1-head and the 3-head 54-parameter memories (:mod:`..models.moons`) on the
8 training systems, then measure the autoregressive generation error against the context length on
the training systems, the validation system and a system with unseen periods. Writes to ``--out``:

- ``metrics.json``: settings, systems (periods in units and steps), per seed and model the training
  losses, error-vs-context curves and disentanglement, ``summary[model][split]`` (mean over seeds)
  and ``summary_median`` (median over seeds);
- ``seeds.md`` / ``seeds.json``: median, mean, standard deviation, min and max over seeds of the
  summary, and (both models) a row per seed;
- figures: ``error_vs_context.png``, ``error_vs_context_train.png``, ``drift.png`` (error against
  the generated step), ``weights.png`` (every seed), and for the seed whose 3-head model has the
  median validation error ``trajectories.png`` and ``attention.png`` (``--replot`` redraws them).

Summary regions, per system, with P = its longest individual period and C = its combined period
(in steps): ``before_periods`` = mean error over contexts c < P, ``between_periods`` over P <= c < C,
``after_combined`` over c >= C. ``train`` averages the 8 systems over those where the region has
contexts (four training systems have C = P, so no "between" region).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm, trange

from ..data.moons import OBSERVERS, TIE_BREAKS, UNSEEN_PERIODS, WINDOW, MoonSystem, sample_batch, spec_systems
from ..layers import ContextualMemory
from ..models.moons import disentanglement, generate, moons_memory
from ..training.mlx_adam import MLXAdam, mlx_param_groups
from ..training.optim import set_lr

EXPERIMENT = "moons"
HELP = "three moons: 1 head vs 3 heads of a 54-parameter memory (paper section 3)"

MODELS = {"1head": 1, "3heads": 3}
HEADS_ARG = {"1": ["1head"], "3": ["3heads"], "both": list(MODELS)}
SPLITS = ("train", "validation", "unseen")
REGIONS = ("before_periods", "between_periods", "after_combined")
EVAL_SEED = 1234  # the evaluation windows are the same for every training seed
DISENTANGLED = 0.95  # a 3-head model "tracks one moon per head" at this disentanglement score


@dataclass(frozen=True)
class Settings:
    """Training (spec 4.1) and evaluation sizes."""

    steps: int = 500
    batch_size: int = 64
    lr: tuple[float, float] = (1e-2, 5e-6)  # linear from first to last step
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # per raw weight of the reference (MLX's default); 2e-8 per complex parameter
    bias_correction: bool = False  # False: MLX's Adam on the reference's raw weights (see train)
    clip: float = 0.5
    eval_windows: int = 32  # per system
    context_step: int = 10
    max_context: int = 700
    gen_steps: int = 25

    @property
    def contexts(self) -> list[int]:
        return list(range(self.context_step, self.max_context + 1, self.context_step))


FULL = Settings()
QUICK = Settings(steps=10, batch_size=8, eval_windows=2, context_step=50)


def add_arguments(parser) -> None:
    parser.add_argument("--heads", choices=("1", "3", "both"), default="both", help="which model(s) to train")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds: seed, seed + 1, ...")
    parser.add_argument("--observer", choices=OBSERVERS, default="sun", help="see data/moons.py")
    parser.add_argument(
        "--tie-break", choices=TIE_BREAKS, default="stable", help="which tied systems are kept (see data/moons.py)"
    )
    parser.add_argument("--out", default="runs/moons", help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny run (10 steps, few windows) for tests")
    parser.add_argument("--replot", action="store_true", help="only redraw the figures from OUT/metrics.json")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    parser.add_argument(
        "--jobs", type=int, default=None, help="models trained in parallel processes (default: one per CPU core)"
    )
    parser.add_argument(
        "--bias-correction",
        action="store_true",
        help="torch's bias-corrected AdamW instead of the reference's MLX Adam (training/mlx_adam.py)",
    )


def clipped_loss(y_hat: Tensor, y: Tensor, clip: float) -> Tensor:
    """Spec loss: mean of clip(y_hat - y, -clip, clip)^2 over (B, T, 6)."""
    return (y_hat - y).clamp(-clip, clip).square().mean()


def train(
    memory: ContextualMemory, systems: list[MoonSystem], settings: Settings, seed: int, desc: str, progress: bool = True
) -> list[float]:
    """Adam (betas 0.9/0.999, no weight decay), lr linear lr[0] -> lr[1]; returns the losses.

    Default: the reference code's update, MLX's AdamW with weight decay 0 (no bias correction) on
    its raw 6x6 weights, expressed on the complex parameters (:class:`MLXAdam`:
    ``w -= lr * m_t / (sqrt(v_t) + 2 eps)`` with m_t, v_t the moments of this project's gradients).
    ``bias_correction=True``: torch's standard AdamW (eps ``settings.eps``).
    """
    gen = torch.Generator().manual_seed(seed)
    lr0, lr1 = settings.lr
    if settings.bias_correction:
        opt = torch.optim.AdamW(memory.parameters(), lr=lr0, betas=settings.betas, eps=settings.eps, weight_decay=0.0)
    else:
        opt = MLXAdam(mlx_param_groups(memory), lr=lr0, betas=settings.betas, eps=settings.eps)
    losses = []
    memory.train()
    for step in (bar := trange(settings.steps, desc=desc, disable=not progress)):
        set_lr(opt, lr0 + (lr1 - lr0) * step / max(1, settings.steps - 1))
        x, y = sample_batch(systems, settings.batch_size, WINDOW, gen)  # (B, 800, 6)
        loss = clipped_loss(memory(x), y, settings.clip)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    memory.eval()
    return losses


@torch.no_grad()
def generation_errors(memory: ContextualMemory, x: Tensor, settings: Settings, progress: bool = True) -> Tensor:
    """|generated - truth| averaged over the 6 coordinates, per context, window and generated step.

    x (B, WINDOW, 6) true windows -> (len(contexts), B, gen_steps): entry [i, b, j] is the error on
    x_{c+j} after conditioning on x_0 .. x_{c-1}, c = contexts[i] (j = 0 is the one-step prediction).
    """
    rows = []
    for c in tqdm(settings.contexts, desc="evaluate", leave=False, disable=not progress):
        g = generate(memory, x[:, :c], settings.gen_steps)  # predictions of x_c .. x_{c+gen_steps-1}
        rows.append((g - x[:, c : c + settings.gen_steps]).abs().mean(dim=2))
    return torch.stack(rows)


def region_masks(contexts: list[int], system: MoonSystem) -> dict[str, Tensor]:
    """Contexts before the longest period P, between P and the combined period C, after C: (n_ctx,) bools."""
    c = torch.tensor(contexts, dtype=torch.float64)
    P, C = max(system.periods_in_steps()), system.combined_period_in_steps()
    return {"before_periods": c < P, "between_periods": (c >= P) & (c < C), "after_combined": c >= C}


def region_means(values: Tensor, masks: dict[str, Tensor]) -> dict[str, list[float] | float | None]:
    """Mean of values (n_ctx, ...) over the contexts of each region (None for an empty region)."""
    return {name: values[m].mean(dim=0).tolist() if m.any() else None for name, m in masks.items()}


def mean_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def system_info(s: MoonSystem) -> dict:
    return {
        "periods": list(s.periods),
        "periods_steps": s.periods_in_steps(),
        "combined_steps": s.combined_period_in_steps(),
    }


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_model(
    seed: int, name: str, systems: dict, eval_x: Tensor, settings: Settings, threads: int = 1, progress: bool = True
) -> dict:
    """Train and evaluate one model for one seed: losses, curves, summary, weights, ...

    Self-contained (seeds its own initialisation and batches), so that jobs can run in any order
    and in separate processes with identical results.
    """
    torch.set_num_threads(threads)
    all_systems = systems["train"] + [systems["validation"], systems["unseen"]]
    contexts = settings.contexts
    torch.manual_seed(seed)
    memory = moons_memory(MODELS[name])
    losses = train(memory, systems["train"], settings, seed, desc=f"{name} seed {seed}", progress=progress)
    err = generation_errors(memory, eval_x, settings, progress)  # (n_ctx, S * W, gen_steps)
    err = err.view(len(contexts), len(all_systems), -1, settings.gen_steps).mean(dim=2)  # (n_ctx, S, gen_steps)
    masks = [region_masks(contexts, s) for s in all_systems]
    curves = [err[:, i].mean(dim=1) for i in range(len(all_systems))]  # per system: error vs context
    regions = [region_means(curve, m) for curve, m in zip(curves, masks)]
    curves = [curve.tolist() for curve in curves]
    score = disentanglement(memory)
    n = len(systems["train"])
    summary = {
        "train": {r: mean_of([reg[r] for reg in regions[:n]]) for r in REGIONS},
        "validation": regions[n],
        "unseen": regions[n + 1],
    }
    for split in SPLITS:
        summary[split]["disentanglement"] = score
    return {
        "losses": losses,
        "curves": {"train": curves[:n], "validation": curves[n], "unseen": curves[n + 1]},
        "disentanglement": score,
        "summary": summary,
        "step_errors": {  # error at each generated step, averaged over the contexts of each region
            split: region_means(err[:, i], masks[i]) for split, i in (("validation", n), ("unseen", n + 1))
        },
        "weights": {k: v.tolist() for k, v in memory.state_dict().items()},
    }


def run_models(seeds: list[int], heads: list[str], systems: dict, eval_x: Tensor, settings: Settings, args) -> list[dict]:
    """Every (seed, model) job, in ``args.jobs`` processes: [{"seed": s, "models": {name: result}}]."""
    jobs = [(seed, name) for seed in seeds for name in heads]
    workers = min(len(jobs), args.jobs or usable_cores())
    if workers == 1:
        results = {job: run_model(*job, systems, eval_x, settings, args.threads) for job in jobs}
    else:
        jobs.sort(key=lambda job: -MODELS[job[1]])  # the slower 3-head models first: shorter tail
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(run_model, *job, systems, eval_x, settings, args.threads, False): job for job in jobs
            }
            for future in tqdm(as_completed(futures), total=len(jobs), desc=f"models ({workers} processes)"):
                future.result()  # re-raise a failed job at once
            results = {job: future.result() for future, job in futures.items()}
    return [{"seed": seed, "models": {name: results[seed, name] for name in heads}} for seed in seeds]


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


def make_systems(observer: str, tie_break: str = "stable") -> dict:
    train_systems, validation = spec_systems(observer, tie_break)
    return {"train": train_systems, "validation": validation, "unseen": MoonSystem(UNSEEN_PERIODS, observer)}


def seed_table(runs: list[dict]) -> dict:
    """summary numbers over seeds: {model: {split: {metric: {median, mean, std, min, max, values}}}}."""
    table = {}
    for name in runs[0]["models"]:
        table[name] = {}
        for split in SPLITS:
            table[name][split] = {}
            for metric in (*REGIONS, "disentanglement"):
                values = [run["models"][name]["summary"][split][metric] for run in runs]
                kept = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
                stats = dict.fromkeys(("median", "mean", "std", "min", "max"))
                if len(kept):
                    stats = {
                        "median": kept.quantile(0.5).item(),  # robust to a seed whose generation diverges
                        "mean": kept.mean().item(),
                        "std": kept.std(unbiased=False).item(),
                        "min": kept.min().item(),
                        "max": kept.max().item(),
                    }
                table[name][split][metric] = {**stats, "values": values}
    return table


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def claims(runs: list[dict]) -> dict:
    """The paper's claims, checked per seed on the validation and unseen systems (needs both models)."""
    out = {}
    for split in ("validation", "unseen"):
        per_seed = []
        for run in runs:
            one, three = run["models"]["1head"]["summary"][split], run["models"]["3heads"]["summary"][split]
            between = ratio(three["between_periods"], one["between_periods"])
            per_seed.append(
                {
                    "seed": run["seed"],
                    "between_1head": one["between_periods"],
                    "between_3heads": three["between_periods"],
                    "3heads_between_over_1head_between": between,
                    "3heads_below_1head_between": between is not None and between < 1,
                    "1head_between_over_after": ratio(one["between_periods"], one["after_combined"]),
                    "disentanglement_3heads": three["disentanglement"],
                }
            )
        every = all(p["3heads_below_1head_between"] for p in per_seed)
        out[split] = {"all_seeds_3heads_below_1head_between": every, "per_seed": per_seed}
    return out


def num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1000 else f"{x:.2e}"


def fmt(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{num(stats['median'])} · {num(stats['mean'])} ± {num(stats['std'])} [{num(stats['min'])}, {num(stats['max'])}]"


def table_markdown(table: dict, seeds: list[int]) -> str:
    lines = [
        f"Seeds {seeds}: median · mean ± std [min, max] over seeds; errors are mean |generated - truth|",
        "over 25 generated steps.",
        "",
        "| model | split | before periods | between periods | after combined | disentanglement |",
        "|---|---|---|---|---|---|",
    ]
    for name, splits in table.items():
        for split, metrics in splits.items():
            cells = " | ".join(fmt(metrics[m]) for m in (*REGIONS, "disentanglement"))
            lines.append(f"| {name} | {split} | {cells} |")
    return "\n".join(lines) + "\n"


def per_seed_markdown(runs: list[dict]) -> str:
    """Per seed, validation system: losses, "between" errors of both models, 3-head drift."""
    lines = [
        "Per seed, validation system (one-step / step 25: error of the first / last generated step,",
        'averaged over the contexts of the "between" region):',
        "",
        "| seed | final loss 1h / 3h | between 1h | between 3h | 3h / 1h | after 1h | disentanglement 3h | one-step 3h | step 25 3h |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        one, three = run["models"]["1head"], run["models"]["3heads"]
        a, b = one["summary"]["validation"], three["summary"]["validation"]
        steps = three["step_errors"]["validation"]["between_periods"]
        lines.append(
            f"| {run['seed']} | {one['losses'][-1]:.4f} / {three['losses'][-1]:.4f} | {a['between_periods']:.3f} "
            f"| {num(b['between_periods'])} | {num(b['between_periods'] / a['between_periods'])} "
            f"| {a['after_combined']:.3f} | {three['disentanglement']:.3f} | {num(steps[0])} | {num(steps[-1])} |"
        )
    validation = [(r["models"]["1head"]["summary"]["validation"], r["models"]["3heads"]["summary"]["validation"]) for r in runs]
    below = sum(three["between_periods"] < one["between_periods"] for one, three in validation)
    clean = sum(r["models"]["3heads"]["disentanglement"] >= DISENTANGLED for r in runs)
    lines += [
        "",
        f"3 heads below 1 head between the periods: {below} of {len(runs)} seeds; "
        f"disentanglement >= {DISENTANGLED}: {clean} of {len(runs)} seeds.",
    ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures

COLORS = {"1head": "tab:blue", "3heads": "tab:orange"}
LABELS = {"1head": "1 head", "3heads": "3 heads"}
Y_MAX = 1.5  # error axes are cut there: a generation that blows up would hide everything else
TRAJECTORY_CONTEXT = 150  # between the validation system's longest period (88.9) and combined period (266.7)


def mark_periods(ax, system: MoonSystem, vertical: bool = True) -> None:
    """Individual periods (grey, dotted) and the combined period (red, dashed), in steps."""
    line = ax.axvline if vertical else ax.axhline
    for p in system.periods_in_steps():
        line(p, color="grey", ls=":", lw=1)
    line(system.combined_period_in_steps(), color="red", ls="--", lw=1)


def title(system: MoonSystem, label: str) -> str:
    return f"{label}: periods {', '.join(f'{p:g}' for p in system.periods)}"


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


def plot_error_figures(out: Path, metrics: dict, systems: dict) -> None:
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(out / "error_vs_context.png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharey=True)
    for j, (ax, system) in enumerate(zip(axes.flat, systems["train"])):
        plot_errors(ax, metrics, "train", j, system)
        ax.set_title(title(system, "train"), fontsize=9)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(out / "error_vs_context_train.png", dpi=70)
    plt.close(fig)


def plot_drift(out: Path, metrics: dict) -> None:
    """Error at each generated step j (median over seeds of the mean over the contexts of a region)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    steps = list(range(1, metrics["settings"]["gen_steps"] + 1))
    for ax, split in zip(axes, ("validation", "unseen")):
        for name in metrics["runs"][0]["models"]:
            for region, style in (("between_periods", "-"), ("after_combined", "--")):
                per_seed = [run_["models"][name]["step_errors"][split][region] for run_ in metrics["runs"]]
                if per_seed[0] is not None:
                    median = torch.tensor(per_seed).quantile(0.5, dim=0).tolist()
                    ax.plot(steps, median, style, color=COLORS[name], label=f"{LABELS[name]}, {region.replace('_', ' ')}")
        ax.set_title(split, fontsize=10)
        ax.set_xlabel("generated step j (1 = one-step prediction)")
        ax.set_ylim(0, min(ax.get_ylim()[1], Y_MAX))
    axes[0].set_ylabel("mean |generated - truth|")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=80)
    plt.close(fig)


@torch.no_grad()
def plot_trajectories(out: Path, memories: dict, system: MoonSystem, seed: int) -> None:
    """Re coordinate of each moon: truth, teacher-forced prediction, generation after TRAJECTORY_CONTEXT."""
    import matplotlib.pyplot as plt

    x, _ = system.windows(1, WINDOW, torch.Generator().manual_seed(EVAL_SEED))
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
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=70)
    plt.close(fig)


@torch.no_grad()
def plot_attention(out: Path, memories: dict, system: MoonSystem, seed: int) -> None:
    """Retrieval weights of every head on one validation window, first combined period + 100 steps."""
    import matplotlib.pyplot as plt

    x, _ = system.windows(1, WINDOW, torch.Generator().manual_seed(EVAL_SEED))
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
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=70)
    plt.close(fig)


@torch.no_grad()
def plot_weights(out: Path, runs: list[dict]) -> None:
    """|w| of the 3x3 complex weights W_phi (keys), W_psi (values), W_z (output); one row per seed."""
    import matplotlib.pyplot as plt

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
    fig.suptitle("|complex weights|: columns = input moons (m), rows = outputs (o; for 3 heads, o_h = head h)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "weights.png", dpi=70)
    plt.close(fig)


def plot_all(out: Path, metrics: dict, systems: dict) -> None:
    """Every figure: error curves of all seeds, then one seed (the median) in detail, weights of all seeds."""
    import matplotlib

    matplotlib.use("Agg")
    plot_error_figures(out, metrics, systems)
    plot_drift(out, metrics)
    run_ = metrics["runs"][median_run(metrics["runs"])]
    memories = load_memories(run_)
    plot_trajectories(out, memories, systems["validation"], run_["seed"])
    plot_attention(out, memories, systems["validation"], run_["seed"])
    plot_weights(out, metrics["runs"])


def run(args) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return reproduce(args)
    finally:
        torch.set_num_threads(threads)


def write_tables(out: Path, runs: list[dict]) -> str:
    """seeds.json (statistics over seeds) and seeds.md (them, and per-seed rows); returns seeds.md."""
    table = seed_table(runs)
    (out / "seeds.json").write_text(json.dumps(table, indent=1))
    text = table_markdown(table, [run["seed"] for run in runs])
    if set(runs[0]["models"]) == set(MODELS):
        text += "\n" + per_seed_markdown(runs)
    (out / "seeds.md").write_text(text)
    return text


def reproduce(args) -> int:
    """Train, evaluate and write everything for ``mosaics reproduce moons``."""
    settings = replace(QUICK if args.quick else FULL, bias_correction=args.bias_correction)
    heads = HEADS_ARG[args.heads]
    out = Path(args.out)
    if args.replot:
        metrics = json.loads((out / "metrics.json").read_text())
        write_tables(out, metrics["runs"])
        settings_ = metrics["settings"]
        plot_all(out, metrics, make_systems(settings_["observer"], settings_.get("tie_break", "stable")))
        return 0
    out.mkdir(parents=True, exist_ok=True)

    systems = make_systems(args.observer, args.tie_break)
    train_systems, validation = systems["train"], systems["validation"]
    gen = torch.Generator().manual_seed(EVAL_SEED)
    all_systems = train_systems + [validation, systems["unseen"]]
    eval_x = torch.cat([s.windows(settings.eval_windows, WINDOW, gen)[0] for s in all_systems])  # (S * W, 800, 6)

    start = time.perf_counter()
    seeds = list(range(args.seed, args.seed + args.seeds))
    runs = run_models(seeds, heads, systems, eval_x, settings, args)
    elapsed = time.perf_counter() - start

    table = seed_table(runs)
    metrics = {
        "settings": {
            **asdict(settings),
            "observer": args.observer,
            "tie_break": args.tie_break,
            "seeds": seeds,
            "eval_seed": EVAL_SEED,
        },
        "contexts": settings.contexts,
        "systems": {
            "train": [system_info(s) for s in train_systems],
            "validation": system_info(validation),
            "unseen": system_info(systems["unseen"]),
        },
        "runs": runs,
        "summary": {  # mean over seeds
            name: {split: {m: v["mean"] for m, v in stats.items()} for split, stats in splits.items()}
            for name, splits in table.items()
        },
        "summary_median": {  # median over seeds
            name: {split: {m: v["median"] for m, v in stats.items()} for split, stats in splits.items()}
            for name, splits in table.items()
        },
        "claims": claims(runs) if len(heads) == 2 else None,
        "seconds": elapsed,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    seeds_md = write_tables(out, runs)
    plot_all(out, metrics, systems)
    print(seeds_md)
    print(f"trained and evaluated {len(seeds)} seed(s) x {len(heads)} model(s) in {elapsed:.0f} s; wrote {out}")
    return 0
