"""Ablations of every Memory Mosaic ingredient: ``mosaics reproduce ablations``.

    mosaics reproduce ablations [--ablations NAME ...] [--probes regbench mqar] [--jobs N] [--resume]
                                [common flags: --seeds (default 0 1) --out --threads --device --progress --quick]

Each ablation is one :class:`~memory_mosaics.MosaicConfig` switch on the reference Mosaic (no
forks), scored by the probes of :mod:`.probes` (RegBench CPU preset at N = 1000: accuracy and TVD;
MQAR, width 64, 256 tokens / 64 pairs: accuracy) with every seed. Outputs in ``--out``:
``results.json`` (every job, and the summary), ``ablations.md`` (the table: ingredient, setting,
scores as mean +- std over seeds, delta of the mean against the reference) and ``ablations.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common_arguments, apply_threads, pyplot, seeds
from .studies import Study, add_study_arguments, check_jobs, summarise

EXPERIMENT = "ablations"
HELP = "ablations of every Memory Mosaic ingredient, on RegBench and MQAR"

# name: (ingredient, setting, MosaicConfig overrides); "reference" is the paper's Mosaic
ABLATIONS: dict[str, tuple[str, str, dict]] = {
    "reference": ("reference", "paper's Memory Mosaic", {}),
    "keys-current": ("keys", "no leaky average (current token)", {"key_extractor": "current"}),
    "keys-fixed-decay": ("keys", "fixed decay (initial values)", {"key_extractor": "leaky_fixed"}),
    "keys-gated": ("keys", "v2 gated keys", {"key_extractor": "gated"}),
    "peek-off": ("value peek", "off (value of the current token)", {"value_peek": "off"}),
    "peek-fixed": ("value peek", "fixed gamma (initial values)", {"value_peek": "fixed"}),
    "bandwidth-fixed": ("bandwidth", "fixed (initial value e^2)", {"bandwidth": "fixed"}),
    "bandwidth-adaptive": ("bandwidth", "v2 adaptive", {"bandwidth": "adaptive"}),
    "pmem-mlp": ("persistent memory", "GELU MLP, equal weights", {"persistent": "mlp"}),
    "pmem-swiglu": ("persistent memory", "SwiGLU, equal weights", {"persistent": "swiglu"}),
    "keys-unnormalized": ("key normalisation", "unnormalised keys", {"normalize_keys": False}),
    "heads-2": ("heads at equal width", "2 heads", {"n_head": 2}),
    "heads-8": ("heads at equal width", "8 heads", {"n_head": 8}),
}
PROBE_METRICS = {"regbench": ("accuracy", "tvd"), "mqar": ("accuracy",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, EXPERIMENT, models=("mosaic",), default_seeds=(0, 1))
    add_study_arguments(parser, PROBE_METRICS, PROBE_METRICS)
    parser.add_argument(
        "--ablations",
        nargs="+",
        choices=list(ABLATIONS),
        default=list(ABLATIONS),
        metavar="NAME",
        help=f"which ablations ({', '.join(ABLATIONS)}; default: all; the reference always runs)",
    )


def jobs(args: argparse.Namespace) -> list[dict]:
    names = ["reference"] + [a for a in args.ablations if a != "reference"]
    return [
        {"probe": probe, "ablation": name, "kind": "mosaic", "overrides": ABLATIONS[name][2], "seed": seed}
        for seed in seeds(args)  # seeds outermost: an interrupted study has every cell with fewer seeds
        for probe in args.probes
        for name in names
    ]


def table(rows: list[dict]) -> list[str]:
    """The markdown table: one line per ablation, the probes' metrics as mean +- std (delta vs reference)."""
    by = {(r["probe"], r["ablation"]): r for r in rows}
    probes = [p for p in PROBE_METRICS if any(r["probe"] == p for r in rows)]
    columns = [(p, m) for p in probes for m in PROBE_METRICS[p]]
    head = ["ingredient", "setting"] + [f"{p} {m}" for p, m in columns] + ["seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["ablation"] for r in rows):
        ingredient, setting, _ = ABLATIONS[name]
        cells = [ingredient, setting]
        for p, m in columns:
            row, ref = by.get((p, name)), by.get((p, "reference"))
            if row is None or row["n"] == 0:
                cells.append("diverged" if row else "")
                continue
            cell = f"{row[f'{m}_mean']:.3f} ± {row[f'{m}_std']:.3f}"
            if name != "reference" and ref is not None and ref["n"]:
                cell += f" ({row[f'{m}_mean'] - ref[f'{m}_mean']:+.3f})"
            cells.append(cell)
        n = sorted({by[(p, name)]["n"] for p in probes if (p, name) in by})
        cells.append("/".join(map(str, n)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(rows: list[dict], path: Path) -> bool:
    """Accuracy of every ablation minus the reference's, one panel per probe, error bars = std."""
    plt = pyplot()
    if plt is None:
        return False
    probes = [p for p in PROBE_METRICS if any(r["probe"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 5), sharex=True, sharey=True, squeeze=False)
    for ax, probe in zip(axes[0], probes):
        mine = [r for r in rows if r["probe"] == probe and r["n"]]
        ref = next((r for r in mine if r["ablation"] == "reference"), None)
        base = ref["accuracy_mean"] if ref else 0.0
        names = [r["ablation"] for r in mine]
        ax.barh(
            names,
            [r["accuracy_mean"] - base for r in mine],
            xerr=[r["accuracy_std"] for r in mine],
            color=["gray" if n == "reference" else "tab:blue" for n in names],
        )
        ax.axvline(0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{probe} accuracy - reference ({base:.3f})")
        ax.set_title(probe)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    check_jobs(args.jobs)
    apply_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"experiment": EXPERIMENT, "quick": args.quick, "ablations": {k: list(v) for k, v in ABLATIONS.items()}}
    study = Study(out, header, args.resume, args.replot)
    runs = study.replot() if args.replot else study.run(jobs(args), args)
    rows = summarise(runs, ("probe", "ablation"), ("accuracy", "tvd"))
    study.data["summary"] = rows
    study.save()
    lines = table(rows)
    (out / "ablations.md").write_text("\n".join(lines) + "\n")
    figure = out / "ablations.png"
    print("\n".join(lines))
    print(f"wrote {study.path}, {out / 'ablations.md'}" + (f" and {figure}" if plot(rows, figure) else ""))
    return 0
