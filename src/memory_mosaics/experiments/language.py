"""Language modelling, Mosaic vs GPT-2 (spec section 4.2: figures 7 and 8, tables 4 and 5).

    mosaics reproduce language [--config configs/cpu-d128.toml] [--depths 1 2 4] [--max-steps N]
                               [--jobs 2] [--out runs/language] [--quick]

1. Depth sweep (figure 7): for every depth, a Mosaic and a GPT-2 of equal block parameter count
   (12 d^2 per block) are trained by ``mosaics train`` with the same data, steps and
   hyper-parameters, ``--jobs`` runs at a time (one CPU thread each). A finished run is reused and
   a crashed one resumed, so the command can be re-run after an interruption.
2. Evaluation (figure 8): each model's mean loss at every position of ``context``-token windows of
   the in-distribution validation text and of the out-of-distribution text (Wikipedia).
3. Generations (tables 4-5): the same prompts continued by every model, greedy and sampled.

Writes ``results.json``, ``figure7.png``, ``figure8.png`` and ``generations.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

EXPERIMENT = "language"
HELP = "Mosaic vs GPT-2 language models: depth sweep, out-of-distribution loss by position, generations"

MODELS = ("mosaic", "gpt")
PROMPTS = (
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a red ball. One day, the ball rolled into the garden and",
    "The sun was hot, so Mia and her dog went to the",
    "Ben wanted to build a tall tower with his blocks, but",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/cpu-d128.toml", help="training preset (TOML/JSON) shared by all runs")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--max-steps", type=int, help="override the preset's max_steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="other overrides for every run")
    parser.add_argument("--ood", default="shared:ood/wikipedia.txt", help="out-of-distribution evaluation text")
    parser.add_argument("--eval-windows", type=int, default=200, help="windows per evaluation corpus (0: all)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time (one thread each)")
    parser.add_argument("--out", default="runs/language")
    parser.add_argument("--quick", action="store_true", help="a tiny end-to-end run (tests)")


def _train_command(args, model: str, depth: int, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "memory_mosaics.cli", "train", "--config", args.config, "--model", model,
           "--n-layer", str(depth), "--out", str(run_dir), "--resume", "--no-progress"]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    for assignment in args.set:
        cmd += ["--set", assignment]
    if args.jobs > 1:
        cmd += ["--threads", "1"]
    return cmd


def _finished(run_dir: Path) -> bool:
    done = run_dir / "done.json"
    return done.is_file()


def train_all(args, runs: list[tuple[str, int, Path]]) -> None:
    """Train every (model, depth) run, ``args.jobs`` at a time; logs go to RUN/train.log."""
    pending = [r for r in runs if not _finished(r[2])]
    active: list[tuple[subprocess.Popen, Path, float]] = []
    while pending or active:
        while pending and len(active) < args.jobs:
            model, depth, run_dir = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "a")
            print(f"[language] training {model} depth {depth} -> {run_dir}", flush=True)
            proc = subprocess.Popen(_train_command(args, model, depth, run_dir), stdout=log, stderr=subprocess.STDOUT)
            active.append((proc, run_dir, time.time()))
        time.sleep(2)
        for proc, run_dir, start in list(active):
            if proc.poll() is None:
                continue
            active.remove((proc, run_dir, start))
            if proc.returncode != 0:
                raise ValueError(f"training failed ({proc.returncode}); see {run_dir / 'train.log'}")
            (run_dir / "done.json").write_text(json.dumps({"wall_s": time.time() - start}))
            print(f"[language] finished {run_dir} in {time.time() - start:.0f} s", flush=True)


def _curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curves = {"train": [], "valid": []}
    for row in rows:
        curves[row["split"]].append((row["step"], row["loss"]))
    curves["tokens_per_s"] = [row["tokens_per_s"] for row in rows if row["split"] == "train"]
    return curves


@torch.no_grad()
def _generations(model, tokenizer, max_new: int = 60) -> dict[str, list[str]]:
    out = {"greedy": [], "sampled": []}
    for prompt in PROMPTS:
        idx = torch.tensor([tokenizer.encode(prompt)])
        for mode, kw in (("greedy", {"temperature": 0}), ("sampled", {"temperature": 0.8, "top_k": 50})):
            gen = torch.Generator().manual_seed(0)
            ids = model.generate(idx, max_new, eos_token=tokenizer.eot_id, generator=gen, **kw)[0, idx.shape[1]:]
            ids = [i for i in ids.tolist() if i != tokenizer.eot_id]
            out[mode].append(tokenizer.decode(ids).replace("\n", " ").strip())
    return out


def evaluate_all(args, runs, context: int) -> dict:
    from ..data.tokenizers import load_tokenizer
    from ..models import load_pretrained
    from ..training.checkpoint import resolve_checkpoint
    from ..training.config import TrainConfig, resolve_cache_dir
    from ..training.evaluate import evaluate
    from ..training.trainer import open_corpus

    results = {}
    for model_kind, depth, run_dir in runs:
        ckpt = resolve_checkpoint(run_dir)
        model, tokenizer = load_pretrained(ckpt).eval(), load_tokenizer(ckpt)
        cfg = TrainConfig.from_file(run_dir / "train_config.json")
        cache = resolve_cache_dir(cfg.cache_dir)
        entry = {"model": model_kind, "depth": depth, "params": model.num_params(),
                 "block_params": sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2),
                 "curves": _curves(run_dir), "wall_s": json.loads((run_dir / "done.json").read_text())["wall_s"]}
        for name, source in (("valid", cfg.valid), ("ood", args.ood)):
            corpus = open_corpus(source, tokenizer, cache, progress=False)
            entry[name] = evaluate(model, corpus, context, args.eval_windows or None, batch_size=8)
        entry["generations"] = _generations(model, tokenizer, 20 if args.quick else 60)
        results[f"{model_kind}-{depth}"] = entry
        print(f"[language] {model_kind} depth {depth}: valid {entry['valid']['loss']:.3f}  ood {entry['ood']['loss']:.3f}",
              flush=True)
    return results


def _figures(results: dict, depths: list[int], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    colors = {"mosaic": "tab:red", "gpt": "tab:blue"}
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths):
        for kind in MODELS:
            entry = results.get(f"{kind}-{depth}")
            if entry is None:
                continue
            for split, style in (("train", "-"), ("valid", "--")):
                steps, losses = zip(*entry["curves"][split]) if entry["curves"][split] else ((), ())
                ax.plot(steps, losses, style, color=colors[kind], label=f"{kind} {split}")
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss (nats/token)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Figure 7 (CPU scale): training and validation loss, Mosaic vs GPT-2")
    fig.tight_layout()
    fig.savefig(out / "figure7.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, len(depths), figsize=(4.2 * len(depths), 6.4), squeeze=False)
    for col, depth in enumerate(depths):
        for row, split in enumerate(("ood", "valid")):
            ax = axes[row][col]
            for kind in MODELS:
                entry = results.get(f"{kind}-{depth}")
                if entry is not None:
                    curve = torch.tensor(entry[split]["loss_by_position"])
                    smooth = torch.nn.functional.avg_pool1d(curve[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
                    ax.plot(range(1, len(curve) + 1), smooth, color=colors[kind], label=kind)
            ax.set_xscale("log")
            ax.set_title(f"depth {depth}, {'Wikipedia (OOD)' if split == 'ood' else 'TinyStories valid'}", fontsize=9)
            ax.set_xlabel("token position in window")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    axes[0][0].set_ylabel("mean loss")
    axes[1][0].set_ylabel("mean loss")
    fig.suptitle("Figure 8 (CPU scale): loss by position, trained on TinyStories")
    fig.tight_layout()
    fig.savefig(out / "figure8.png", dpi=110)
    plt.close(fig)


def _generations_markdown(results: dict, depths: list[int]) -> str:
    lines = ["# Generations (tables 4-5, CPU scale)", ""]
    for mode in ("greedy", "sampled"):
        for i, prompt in enumerate(PROMPTS):
            lines += [f"## {mode}: \"{prompt}\"", "", "| model | continuation |", "|---|---|"]
            for depth in depths:
                for kind in MODELS:
                    entry = results.get(f"{kind}-{depth}")
                    if entry is not None:
                        text = entry["generations"][mode][i].replace("|", "\\|")
                        lines.append(f"| {kind} depth {depth} | {text} |")
            lines.append("")
    return "\n".join(lines)


def _position_drop(curve: list[float]) -> float:
    """Loss at positions 1-16 minus loss over the last quarter of the window: how much context helps."""
    n = len(curve)
    return sum(curve[:16]) / 16 - sum(curve[3 * n // 4:]) / (n - 3 * n // 4)


def run(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.depths, args.eval_windows = [1], 4
        args.max_steps = args.max_steps or 6
        args.set = [*args.set, "eval_interval=3", "eval_windows=4", "checkpoint_interval=0", "log_interval=1",
                    "batch_size=4", "context=64", "n_embd=32", "n_head=2", "tokenizer=bpe:512"]
    if not Path(args.config).is_file():
        raise ValueError(f"--config {args.config}: no such file")
    preset = TrainConfig.from_file(args.config)
    context = preset.context
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key == "context":
            context = int(value)
    runs = [(kind, depth, out / f"{kind}-{depth}") for depth in args.depths for kind in args.models]
    env_threads = os.environ.get("OMP_NUM_THREADS")
    print(f"[language] {len(runs)} runs from {args.config} (OMP_NUM_THREADS={env_threads})", flush=True)
    train_all(args, runs)
    results = evaluate_all(args, runs, context)
    summary = {
        key: {"params": e["params"], "block_params": e["block_params"], "valid_loss": e["valid"]["loss"],
              "ood_loss": e["ood"]["loss"], "final_train_loss": e["curves"]["train"][-1][1],
              "valid_position_drop": _position_drop(e["valid"]["loss_by_position"]),
              "ood_position_drop": _position_drop(e["ood"]["loss_by_position"]),
              "median_tokens_per_s": sorted(e["curves"]["tokens_per_s"])[len(e["curves"]["tokens_per_s"]) // 2],
              "wall_s": e["wall_s"]}
        for key, e in results.items()
    }
    (out / "results.json").write_text(json.dumps({"config": args.config, "overrides": args.set, "context": context,
                                                  "summary": summary, "runs": results}, indent=1))
    _figures(results, args.depths, out)
    (out / "generations.md").write_text(_generations_markdown(results, args.depths))
    print(json.dumps(summary, indent=1))
    return 0
