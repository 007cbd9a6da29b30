"""Language modelling, Mosaic vs GPT-2 (spec section 4.2: figures 7 and 8, tables 4 and 5).

    mosaics reproduce language [--config configs/cpu-d128.toml] [--depths 1 2 4] [--max-steps N]
                               [--models mosaic gpt] [--v2-depths D] [--lrs 2e-3 4e-3 8e-3 --sweep-steps N]
                               [--long-context 4] [--jobs 2] [--deadline-s S] [--out runs/language] [--quick]

1. Learning rates (optional, ``--lrs``): for every (model, depth), short runs of ``--sweep-steps``
   at each learning rate; the one with the lowest final validation loss is that model's learning
   rate for its full run (written to ``sweep.json``); a sweep run that fails (diverges) is
   recorded and left out of the choice.
2. Depth sweep (figure 7): for every depth, a Mosaic and a GPT-2 of equal block parameter count
   (12 d^2 per block) are trained by ``mosaics train`` with the same data, steps and
   hyper-parameters, ``--jobs`` runs at a time (one CPU thread each); ``--v2-depths`` adds a
   Mosaic with the v2 switches (:data:`V2_ARGS`) at those depths. A finished run is reused and a crashed one resumed, so
   the command can be re-run after an interruption; ``--deadline-s`` stops the runs still going
   at that time (they keep their checkpoints and are evaluated as they stand, marked unfinished).
3. Evaluation (figure 8): each model's mean loss at every position of ``context``-token windows of
   the in-distribution validation text and of the out-of-distribution text (Wikipedia); with
   ``--long-context F`` the Mosaics also on windows F times longer than they were trained on.
4. Generations (tables 4-5): the same prompts continued by every model, greedy and sampled.

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

from .language_analysis import analyse

EXPERIMENT = "language"
HELP = "Mosaic vs GPT-2 language models: depth sweep, out-of-distribution loss by position, generations"

MODELS = ("mosaic", "gpt", "mosaic-v2")
# v2 switches at the CPU context of 256: gated keys, adaptive bandwidth, a short-term memory over the
# last 128 pairs and a long-term one skipping m ~ U[32, 128] (32 at inference), SwiGLU persistent
# memory (spec section 5 uses h = 256, m in [64, 256] at contexts of thousands of tokens).
V2_ARGS = {"key_extractor": "gated", "bandwidth": "adaptive", "short_term_window": 128, "long_term_skip_min": 32,
           "long_term_skip_max": 128, "persistent": "swiglu"}
PROMPTS = (
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a red ball. One day, the ball rolled into the garden and",
    "The sun was hot, so Mia and her dog went to the",
    "Ben wanted to build a tall tower with his blocks, but",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/cpu-d128.toml", help="training preset (TOML/JSON) shared by all runs")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--models", nargs="+", choices=MODELS[:2], default=list(MODELS[:2]))
    parser.add_argument("--v2-depths", type=int, nargs="*", default=[], help="depths at which to add a v2 Mosaic")
    parser.add_argument("--max-steps", type=int, help="override the preset's max_steps")
    parser.add_argument("--lrs", type=float, nargs="+", help="learning rates to sweep per (model, depth)")
    parser.add_argument("--sweep-steps", type=int, default=1000, help="steps of each learning-rate sweep run")
    parser.add_argument("--long-context", type=int, default=0, metavar="F",
                        help="also evaluate the Mosaics on windows F times the training context")
    parser.add_argument("--deadline-s", type=float, default=0, help="stop training runs after this many seconds")
    parser.add_argument("--replot", action="store_true",
                        help="no training: redo the figures and the analysis from --out's results.json and runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="other overrides for every run")
    parser.add_argument("--ood", default="shared:ood/wikipedia.txt", help="out-of-distribution evaluation text")
    parser.add_argument("--eval-windows", type=int, default=200, help="windows per evaluation corpus (0: all)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time (one thread each)")
    parser.add_argument("--out", default="runs/language")
    parser.add_argument("--quick", action="store_true", help="a tiny end-to-end run (tests)")


class Run:
    """One training run: a model kind ("mosaic", "gpt", "mosaic-v2"), a depth, a folder, overrides."""

    def __init__(self, kind: str, depth: int, run_dir: Path, overrides: list[str], after: tuple["Run", ...] = ()):
        self.kind, self.depth, self.dir, self.overrides, self.after = kind, depth, run_dir, overrides, after

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.depth}"

    @property
    def finished(self) -> bool:
        return (self.dir / "done.json").is_file()

    @property
    def failed(self) -> bool:
        return (self.dir / "failed.json").is_file()

    def command(self, args) -> list[str]:
        cmd = [sys.executable, "-m", "memory_mosaics.cli", "train", "--config", args.config,
               "--model", "gpt" if self.kind == "gpt" else "mosaic", "--n-layer", str(self.depth),
               "--out", str(self.dir), "--resume", "--no-progress"]
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        if self.kind == "mosaic-v2":
            cmd += ["--set", "model_args=" + json.dumps(V2_ARGS)]
        for assignment in [*args.set, *self.overrides]:
            cmd += ["--set", assignment]
        if args.jobs > 1:
            cmd += ["--threads", "1"]
        return cmd


def train_all(args, runs: list[Run], deadline: float | None = None) -> None:
    """Train every run, ``args.jobs`` at a time, each once the runs it comes ``after`` are done
    (and a ``Run.overrides`` callable, if any, can read their results); logs go to RUN/train.log.
    At ``deadline`` (a ``time.time()``) the runs still going are stopped, the others not started."""
    pending = [r for r in runs if not (r.finished or r.failed)]
    active: list[tuple[subprocess.Popen, Run, float]] = []
    while pending or active:
        if deadline and time.time() > deadline:
            for proc, run, _ in active:
                proc.terminate()
                proc.wait()
                print(f"[language] deadline: stopped {run.dir} (unfinished)", flush=True)
            return
        ready = [r for r in pending if all(a.finished or a.failed for a in r.after)]
        while ready and len(active) < args.jobs:
            run = ready.pop(0)
            pending.remove(run)
            if callable(run.overrides):
                run.overrides = run.overrides()
            run.dir.mkdir(parents=True, exist_ok=True)
            log = open(run.dir / "train.log", "a")
            print(f"[language] training {run.key} {' '.join(run.overrides)} -> {run.dir}", flush=True)
            proc = subprocess.Popen(run.command(args), stdout=log, stderr=subprocess.STDOUT)
            active.append((proc, run, time.time()))
        if not active and pending and not ready:
            raise ValueError("a run waits for runs that cannot finish")
        time.sleep(1)
        for proc, run, start in list(active):
            if proc.poll() is None:
                continue
            active.remove((proc, run, start))
            if proc.returncode != 0:  # e.g. diverged: recorded, and the other runs go on
                (run.dir / "failed.json").write_text(json.dumps({"returncode": proc.returncode}))
                print(f"[language] FAILED {run.dir} ({proc.returncode}); see {run.dir / 'train.log'}", flush=True)
                continue
            (run.dir / "done.json").write_text(json.dumps({"wall_s": time.time() - start}))
            print(f"[language] finished {run.dir} in {time.time() - start:.0f} s", flush=True)


def prepare_data(args, cfg) -> None:
    """Build the tokenizer and the token caches once, before the runs that share them start."""
    from ..data.sources import build_tokenizer, open_corpus, resolve_cache_dir

    cache = resolve_cache_dir(cfg.cache_dir)
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.train, cache, cfg.separator, cfg.text_field)
    for source in (cfg.train, cfg.valid, args.ood):
        if source:
            open_corpus(source, tokenizer, cache, cfg.separator, cfg.text_field)


def _final_valid_loss(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [row["loss"] for row in rows if row["split"] == "valid"]
    if not losses:
        raise ValueError(f"{run_dir}: no validation loss was logged (the preset needs a `valid` corpus)")
    return losses[-1]


def plan_runs(args, out: Path) -> tuple[list[Run], list[Run], dict]:
    """(sweep runs, full runs, sweep record): the full run of each (model, depth) comes after its
    sweep runs and takes the learning rate with the lowest final validation loss."""
    sweep_runs, full_runs, record = [], [], {}
    for depth in args.depths:
        by_kind: dict[str, list[Run]] = {}
        for kind in [*args.models, *(["mosaic-v2"] if depth in args.v2_depths else [])]:
            if args.lrs:
                by_kind[kind] = [Run(kind, depth, out / "sweep" / f"{kind}-{depth}-lr{lr:g}",
                                      [f"lr={lr}", f"max_steps={args.sweep_steps}"]) for lr in args.lrs]
                sweep_runs += by_kind[kind]
            sweeps = tuple(by_kind.get(kind, ()))

            def choose(kind=kind, depth=depth, sweeps=sweeps) -> list[str]:
                losses = {float(r.overrides[0][3:]): _final_valid_loss(r.dir) for r in sweeps if r.finished}
                failed = [float(r.overrides[0][3:]) for r in sweeps if not r.finished]
                best = min(losses, key=losses.get) if losses else None
                record[f"{kind}-{depth}"] = {"valid_loss_by_lr": losses, "failed_lrs": failed, "lr": best}
                (out / "sweep.json").write_text(json.dumps(record, indent=1))
                return [f"lr={best}"] if losses else []

            full_runs.append(Run(kind, depth, out / f"{kind}-{depth}", choose if sweeps else [], sweeps))
    return sweep_runs, full_runs, record


def _curves(run_dir: Path) -> dict[str, list]:
    """(tokens, loss) pairs of the train and valid rows, the diagnostics rows, the tokens/s of each train row."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curves = {"train": [], "valid": [], "diagnostics": []}
    for row in rows:
        if row["split"] == "diagnostics":
            curves["diagnostics"].append({k: v for k, v in row.items() if k not in ("split", "tokens")})
        else:
            curves[row["split"]].append((row["tokens"], row["loss"]))
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


def evaluate_all(args, runs: list[Run], context: int) -> dict:
    from ..data.tokenizers import load_tokenizer
    from ..models import load_pretrained
    from ..training.checkpoint import resolve_checkpoint
    from ..data.sources import open_corpus, resolve_cache_dir
    from ..training.config import TrainConfig
    from ..eval.language import evaluate

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for run in runs:
        if not (run.dir / "metrics.jsonl").is_file():
            continue  # never started (deadline)
        ckpt = resolve_checkpoint(run.dir)
        model, tokenizer = load_pretrained(ckpt).eval().to(device), load_tokenizer(ckpt)
        cfg = TrainConfig.from_file(run.dir / "train_config.json")
        cache = resolve_cache_dir(cfg.cache_dir)
        done = run.dir / "done.json"
        entry = {"model": run.kind, "depth": run.depth, "params": model.num_params(), "lr": cfg.lr,
                 "block_params": sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2),
                 "checkpoint": ckpt.name, "finished": run.finished, "curves": _curves(run.dir),
                 "wall_s": json.loads(done.read_text())["wall_s"] if run.finished else None}
        windows = args.eval_windows or None
        for name, source in (("valid", cfg.valid), ("ood", args.ood)):
            corpus = open_corpus(source, tokenizer, cache, progress=False)
            entry[name] = evaluate(model, corpus, context, windows, batch_size=8, device=device)
            if args.long_context > 1 and run.kind != "gpt":
                long = args.long_context * context
                entry[f"{name}_long"] = evaluate(model, corpus, long, windows, batch_size=2, device=device)
        entry["generations"] = _generations(model.cpu(), tokenizer, 20 if args.quick else 60)
        results[run.key] = entry
        print(f"[language] {run.key}: valid {entry['valid']['loss']:.3f}  ood {entry['ood']['loss']:.3f}", flush=True)
    return results


COLORS = {"mosaic": "tab:red", "gpt": "tab:blue", "mosaic-v2": "tab:green"}


def _figures(results: dict, depths: list[int], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[language] matplotlib is not installed: no figures (pip install 'memory-mosaics[plots]')", flush=True)
        return
    fig, axes = plt.subplots(1, len(depths), figsize=(4.2 * len(depths), 3.6), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths):
        for kind in MODELS:
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
            for kind in MODELS:
                entry = results.get(f"{kind}-{depth}")
                if entry is None:
                    continue
                for key, style, suffix in ((split, "-", ""), (f"{split}_long", ":", " (4x context)")):
                    if key in entry:
                        curve = torch.tensor(entry[key]["loss_by_position"])
                        smooth = torch.nn.functional.avg_pool1d(curve[None, None], 9, 1, 4, count_include_pad=False)[0, 0]
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


def _summary(e: dict) -> dict:
    tok_s = sorted(e["curves"]["tokens_per_s"])
    row = {"params": e["params"], "block_params": e["block_params"], "lr": e["lr"], "finished": e["finished"],
           "tokens": e["curves"]["train"][-1][0] if e["curves"]["train"] else 0,
           "valid_loss": e["valid"]["loss"], "ood_loss": e["ood"]["loss"],
           "final_train_loss": e["curves"]["train"][-1][1] if e["curves"]["train"] else None,
           "valid_position_drop": _position_drop(e["valid"]["loss_by_position"]),
           "ood_position_drop": _position_drop(e["ood"]["loss_by_position"]),
           "median_tokens_per_s": tok_s[len(tok_s) // 2] if tok_s else None, "wall_s": e["wall_s"]}
    if "ood_long" in e:
        row["ood_long_loss"] = e["ood_long"]["loss"]
        row["ood_long_position_drop"] = _position_drop(e["ood_long"]["loss_by_position"])
    return row


def run(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig, parse_assignment

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.depths, args.eval_windows = [1], 4
        args.max_steps = args.max_steps or 6
        args.sweep_steps = min(args.sweep_steps, 3)
        args.set = [*args.set, "eval_interval=3", "eval_windows=4", "checkpoint_interval=0", "log_interval=1",
                    "batch_size=4", "context=64", "n_embd=32", "n_head=2", "tokenizer=bpe:512"]
    if args.replot:
        return replot(args, out)
    if not Path(args.config).is_file():
        raise ValueError(f"--config {args.config}: no such file")
    preset = TrainConfig.from_file(args.config)
    context = preset.context
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key == "context":
            context = int(value)
    prepare_data(args, TrainConfig.from_dict(dict(parse_assignment(a) for a in args.set), preset))
    sweeps, runs, sweep_record = plan_runs(args, out)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    print(f"[language] {len(sweeps)} sweep + {len(runs)} runs from {args.config} (OMP_NUM_THREADS={env_threads})",
          flush=True)
    longest_first = sorted(sweeps, key=lambda r: -r.depth) + sorted(runs, key=lambda r: -r.depth)  # the critical path
    train_all(args, longest_first, start + args.deadline_s if args.deadline_s else None)
    results = evaluate_all(args, runs, context)
    summary = {key: _summary(e) for key, e in results.items()}
    (out / "results.json").write_text(json.dumps({"config": args.config, "overrides": args.set, "context": context,
                                                  "sweep": sweep_record, "summary": summary, "runs": results},
                                                 indent=1))
    _figures(results, args.depths, out)
    (out / "generations.md").write_text(_generations_markdown(results, args.depths))
    analyse(out, results, context, args.ood, args.eval_windows or None)
    print(json.dumps(summary, indent=1))
    return 0


def replot(args, out: Path) -> int:
    """Figures and analysis again from a finished experiment folder."""
    path = out / "results.json"
    if not path.is_file():
        raise ValueError(f"--replot: {path} not found (run the experiment first)")
    saved = json.loads(path.read_text())
    results = saved["runs"]
    _figures(results, sorted({e["depth"] for e in results.values()}), out)
    analyse(out, results, saved["context"], args.ood, args.eval_windows or None)
    return 0
