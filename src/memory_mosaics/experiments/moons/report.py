"""Statistics over seeds and the written report: ``seeds.json`` (median, mean, std, min, max of
every summary number), ``seeds.md`` (them as a table and, with both models, a row per seed) and the
paper's claims checked per seed."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...io import atomic_write_text
from .settings import DISENTANGLED, MODELS, REGIONS, SPLITS

STATS = ("median", "mean", "std", "min", "max")


def statistics(values: list[float | None]) -> dict:
    """{median, mean, std, min, max} of the values that are not None (all None without any)."""
    kept = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if not len(kept):
        return dict.fromkeys(STATS)
    return {
        "median": kept.quantile(0.5).item(),  # robust to a seed whose generation diverges
        "mean": kept.mean().item(),
        "std": kept.std(unbiased=False).item(),
        "min": kept.min().item(),
        "max": kept.max().item(),
    }


def seed_table(runs: list[dict]) -> dict:
    """summary numbers over seeds: {model: {split: {metric: {median, mean, std, min, max, values}}}}."""
    table = {}
    for name in runs[0]["models"]:
        table[name] = {}
        for split in SPLITS:
            table[name][split] = {}
            for metric in (*REGIONS, "disentanglement"):
                values = [run["models"][name]["summary"][split][metric] for run in runs]
                table[name][split][metric] = {**statistics(values), "values": values}
    return table


def over_seeds(table: dict, stat: str) -> dict:
    """One statistic of :func:`seed_table`: {model: {split: {metric: value}}}."""
    return {
        name: {split: {m: v[stat] for m, v in stats.items()} for split, stats in splits.items()}
        for name, splits in table.items()
    }


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
    spread = f"[{num(stats['min'])}, {num(stats['max'])}]"
    return f"{num(stats['median'])} · {num(stats['mean'])} ± {num(stats['std'])} {spread}"


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
        "| seed | final loss 1h / 3h | between 1h | between 3h | 3h / 1h | after 1h | disentanglement 3h "
        "| one-step 3h | step 25 3h |",
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
    validation = [
        (r["models"]["1head"]["summary"]["validation"], r["models"]["3heads"]["summary"]["validation"]) for r in runs
    ]
    below = sum(three["between_periods"] < one["between_periods"] for one, three in validation)
    clean = sum(r["models"]["3heads"]["disentanglement"] >= DISENTANGLED for r in runs)
    lines += [
        "",
        (
            f"3 heads below 1 head between the periods: {below} of {len(runs)} seeds; "
            f"disentanglement >= {DISENTANGLED}: {clean} of {len(runs)} seeds."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_tables(out: Path, runs: list[dict]) -> str:
    """seeds.json (statistics over seeds) and seeds.md (them, and per-seed rows); returns seeds.md."""
    table = seed_table(runs)
    atomic_write_text(out / "seeds.json", json.dumps(table, indent=1))
    text = table_markdown(table, [run["seed"] for run in runs])
    if set(runs[0]["models"]) == set(MODELS):
        text += "\n" + per_seed_markdown(runs)
    atomic_write_text(out / "seeds.md", text)
    return text
