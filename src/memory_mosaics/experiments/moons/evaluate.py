"""Evaluating a trained memory: the systems, the evaluation windows, the autoregressive generation
error against the context length, its summary per region and the disentanglement score.

Summary regions, per system, with P = its longest individual period and C = its combined period
(in steps): ``before_periods`` = mean error over contexts c < P, ``between_periods`` over
P <= c < C, ``after_combined`` over c >= C. ``train`` averages the 8 systems over those where the
region has contexts (four training systems have C = P, so no "between" region).
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm import tqdm

from ...data.moons import UNSEEN_PERIODS, WINDOW, MoonSystem, spec_systems
from ...layers import ContextualMemory
from ...models.moons import disentanglement, generate
from .settings import EVAL_SEED, REGIONS, SPLITS, Settings


def make_systems(observer: str, tie_break: str = "stable") -> dict:
    """{"train": the 8 training systems, "validation": the ninth, "unseen": unseen periods}."""
    train_systems, validation = spec_systems(observer, tie_break)
    return {"train": train_systems, "validation": validation, "unseen": MoonSystem(UNSEEN_PERIODS, observer)}


def all_systems(systems: dict) -> list[MoonSystem]:
    return systems["train"] + [systems["validation"], systems["unseen"]]


def eval_windows(systems: dict, settings: Settings) -> Tensor:
    """``settings.eval_windows`` windows of every system, drawn with EVAL_SEED: (S * W, 800, 6)."""
    gen = torch.Generator().manual_seed(EVAL_SEED)
    return torch.cat([s.windows(settings.eval_windows, WINDOW, gen)[0] for s in all_systems(systems)])


def system_info(s: MoonSystem) -> dict:
    return {
        "periods": list(s.periods),
        "periods_steps": s.periods_in_steps(),
        "combined_steps": s.combined_period_in_steps(),
    }


def systems_info(systems: dict) -> dict:
    return {
        "train": [system_info(s) for s in systems["train"]],
        "validation": system_info(systems["validation"]),
        "unseen": system_info(systems["unseen"]),
    }


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


def evaluate(
    memory: ContextualMemory, systems: dict, eval_x: Tensor, settings: Settings, progress: bool = True
) -> dict:
    """Error-vs-context curves per system, disentanglement, summary per split and region, and the
    error at each generated step per region (validation and unseen systems)."""
    contexts, every = settings.contexts, all_systems(systems)
    err = generation_errors(memory, eval_x, settings, progress)  # (n_ctx, S * W, gen_steps)
    err = err.view(len(contexts), len(every), -1, settings.gen_steps).mean(dim=2)  # (n_ctx, S, gen_steps)
    masks = [region_masks(contexts, s) for s in every]
    curves = [err[:, i].mean(dim=1) for i in range(len(every))]  # per system: error vs context
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
        "curves": {"train": curves[:n], "validation": curves[n], "unseen": curves[n + 1]},
        "disentanglement": score,
        "summary": summary,
        "step_errors": {  # error at each generated step, averaged over the contexts of each region
            split: region_means(err[:, i], masks[i]) for split, i in (("validation", n), ("unseen", n + 1))
        },
    }
