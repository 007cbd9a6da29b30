"""Scoring the trained runs of the language experiment: loss and loss by position on the
validation and out-of-distribution texts (and on longer windows for the Mosaics), training curves,
generations, and the per-run summary row."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...data.sources import open_corpus, resolve_cache_dir
from ...data.tokenizers import load_tokenizer
from ...eval.language import evaluate
from ...models import load_pretrained
from ...training.checkpoint import resolve_checkpoint
from ...training.config import TrainConfig
from ...training.metrics import read_metrics
from .runs import Run

PROMPTS = (
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a red ball. One day, the ball rolled into the garden and",
    "The sun was hot, so Mia and her dog went to the",
    "Ben wanted to build a tall tower with his blocks, but",
)


def curves(run_dir: Path) -> dict[str, list]:
    """(tokens, loss) pairs of the train and valid rows, the diagnostics rows, the tokens/s of each train row.

    The log is append-only: after a resume, steps logged before the crash appear twice, and the last
    row of each (split, step) is the one kept (:func:`memory_mosaics.training.metrics.read_metrics`).
    """
    rows = read_metrics(run_dir)
    out = {"train": [], "valid": [], "diagnostics": []}
    for row in rows:
        if row["split"] == "diagnostics":
            out["diagnostics"].append({k: v for k, v in row.items() if k not in ("split", "tokens")})
        else:
            out[row["split"]].append((row["tokens"], row["loss"]))
    out["tokens_per_s"] = [row["tokens_per_s"] for row in rows if row["split"] == "train"]
    return out


@torch.no_grad()
def generations(model, tokenizer, max_new: int = 60) -> dict[str, list[str]]:
    out = {"greedy": [], "sampled": []}
    for prompt in PROMPTS:
        idx = torch.tensor([tokenizer.encode(prompt)])
        for mode, kw in (("greedy", {"temperature": 0}), ("sampled", {"temperature": 0.8, "top_k": 50})):
            gen = torch.Generator().manual_seed(0)
            ids = model.generate(idx, max_new, eos_token=tokenizer.eot_id, generator=gen, **kw)[0, idx.shape[1] :]
            ids = [i for i in ids.tolist() if i != tokenizer.eot_id]
            out[mode].append(tokenizer.decode(ids).replace("\n", " ").strip())
    return out


def evaluate_all(
    runs: list[Run],
    context: int,
    ood: str,
    windows: int | None,
    long_context: int,
    device: torch.device,
    gen_tokens: int = 60,
) -> dict:
    """Per run: sizes, curves, and the evaluations (module docstring); runs never started are skipped."""
    results = {}
    for run in runs:
        if not (run.dir / "metrics.jsonl").is_file():
            continue  # never started (deadline)
        ckpt = resolve_checkpoint(run.dir)
        model, tokenizer = load_pretrained(ckpt).eval().to(device), load_tokenizer(ckpt)
        cfg = TrainConfig.from_file(run.dir / "train_config.json")
        cache = resolve_cache_dir(cfg.cache_dir)
        done = run.dir / "done.json"
        entry = {
            "model": run.kind,
            "depth": run.depth,
            "params": model.num_params(),
            "lr": cfg.lr,
            "block_params": sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2),
            "checkpoint": ckpt.name,
            "finished": run.finished,
            "curves": curves(run.dir),
            "wall_s": json.loads(done.read_text())["wall_s"] if run.finished else None,
        }
        for name, source in (("valid", cfg.valid), ("ood", ood)):
            corpus = open_corpus(source, tokenizer, cache, progress=False)
            entry[name] = evaluate(model, corpus, context, max_windows=windows, batch_size=8, device=device)
            if long_context > 1 and run.kind != "gpt":
                long = long_context * context
                entry[f"{name}_long"] = evaluate(model, corpus, long, max_windows=windows, batch_size=2, device=device)
        entry["generations"] = generations(model.cpu(), tokenizer, gen_tokens)
        results[run.key] = entry
        print(f"[language] {run.key}: valid {entry['valid']['loss']:.3f}  ood {entry['ood']['loss']:.3f}", flush=True)
    return results


def position_drop(curve: list[float]) -> float:
    """Loss at positions 1-16 minus loss over the last quarter of the window: how much context helps."""
    n = len(curve)
    return sum(curve[:16]) / 16 - sum(curve[3 * n // 4 :]) / (n - 3 * n // 4)


def summary_row(e: dict) -> dict:
    """The numbers of one run that the results table shows."""
    tok_s = sorted(e["curves"]["tokens_per_s"])
    row = {
        "params": e["params"],
        "block_params": e["block_params"],
        "lr": e["lr"],
        "finished": e["finished"],
        "tokens": e["curves"]["train"][-1][0] if e["curves"]["train"] else 0,
        "valid_loss": e["valid"]["loss"],
        "ood_loss": e["ood"]["loss"],
        "final_train_loss": e["curves"]["train"][-1][1] if e["curves"]["train"] else None,
        "valid_position_drop": position_drop(e["valid"]["loss_by_position"]),
        "ood_position_drop": position_drop(e["ood"]["loss_by_position"]),
        "median_tokens_per_s": tok_s[len(tok_s) // 2] if tok_s else None,
        "wall_s": e["wall_s"],
    }
    if "ood_long" in e:
        row["ood_long_loss"] = e["ood_long"]["loss"]
        row["ood_long_position_drop"] = position_drop(e["ood_long"]["loss_by_position"])
    return row
