"""Where the language models differ (issue 15, analysis): loss by position band, by token
frequency and by whether the target already occurred in the window, and the learning curves of the
Mosaic's bandwidths, decays and retrieval entropies.

``analyse(out, results, ...)`` reads the trained runs of ``mosaics reproduce language`` (``out/KEY``)
and writes ``analysis.json`` and ``diagnostics.png``; it runs at the end of the experiment and
again with ``mosaics reproduce language --replot``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...data.sources import open_corpus, resolve_cache_dir
from ...data.tokenizers import load_tokenizer
from ...models import load_pretrained
from ...training.checkpoint import resolve_checkpoint
from ...training.config import TrainConfig
from ..common import pyplot

# position bands of a window (1-based, inclusive); bands past the window are skipped
BANDS = ((1, 16), (17, 64), (65, 256), (257, 512), (513, 1024))
# frequency classes of target tokens by their share of the training tokens: the most frequent types
# that make up the first 50% of the training tokens, the next 40%, the last 10%
MASS_EDGES = (0.5, 0.9)
CLASSES = ("frequent", "medium", "rare")


def position_bands(curve: list[float]) -> dict[str, float]:
    """Mean loss over each band of positions that the curve covers."""
    c = np.asarray(curve)
    return {f"{a}-{b}": float(c[a - 1 : b].mean()) for a, b in BANDS if b <= len(c)}


def frequency_classes(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(V,) class index per token id (0 frequent, 1 medium, 2 rare; unseen ids are rare)."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")
    mass = np.cumsum(counts[order]) / counts.sum()
    classes = np.empty(vocab_size, dtype=np.int64)
    classes[order] = np.searchsorted(np.asarray(MASS_EDGES), mass - counts[order] / counts.sum(), side="right")
    return classes


@torch.no_grad()
def token_losses(model, corpus, context: int, windows: int, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token loss, target id and "target already in the window" flag over ``windows`` windows."""
    losses, targets, seen = [], [], []
    for x, y in corpus.eval_windows(context, windows, 8):
        logits = model(x.to(device)).float()
        losses.append(F.cross_entropy(logits.transpose(1, 2), y.to(device), reduction="none").cpu())
        targets.append(y)
        # y_t occurred among x_0..x_t: (B, T, T) comparison restricted to s <= t
        eq = (y[:, :, None] == x[:, None, :]) & torch.ones(context, context, dtype=torch.bool).tril()
        seen.append(eq.any(-1))
    return torch.cat(losses).flatten().numpy(), torch.cat(targets).flatten().numpy(), torch.cat(seen).flatten().numpy()


def token_table(losses: np.ndarray, targets: np.ndarray, seen: np.ndarray, classes: np.ndarray) -> dict:
    """Mean loss and share of tokens: all, per frequency class, seen / unseen in the window."""
    groups = {"all": np.ones_like(seen)}
    groups.update({name: classes[targets] == i for i, name in enumerate(CLASSES)})
    groups.update({"seen": seen, "unseen": ~seen})
    return {
        name: {"loss": float(losses[m].mean()) if m.any() else None, "share": float(m.mean())}
        for name, m in groups.items()
    }


def analyse(out: Path, results: dict, context: int, ood: str, windows: int | None, device: torch.device) -> dict:
    """Write ``analysis.json`` (and ``diagnostics.png``) for the runs of ``results``; returns the analysis."""
    analysis: dict = {"bands": {}, "tokens": {}, "mass_edges": MASS_EDGES}
    classes_by_tokenizer: dict[str, np.ndarray] = {}
    for key, entry in results.items():
        analysis["bands"][key] = {
            split: position_bands(entry[split]["loss_by_position"])
            for split in ("valid", "ood", "valid_long", "ood_long")
            if split in entry
        }
        run_dir = out / key
        ckpt = resolve_checkpoint(run_dir)
        model, tokenizer = load_pretrained(ckpt).eval().to(device), load_tokenizer(ckpt)
        cfg = TrainConfig.from_file(run_dir / "train_config.json")
        cache = resolve_cache_dir(cfg.cache_dir)
        if tokenizer.fingerprint not in classes_by_tokenizer:
            train = open_corpus(cfg.train, tokenizer, cache, progress=False)
            classes_by_tokenizer[tokenizer.fingerprint] = frequency_classes(train.tokens, model.config.vocab_size)
        classes = classes_by_tokenizer[tokenizer.fingerprint]
        analysis["tokens"][key] = {}
        for split, source in (("valid", cfg.valid), ("ood", ood)):
            corpus = open_corpus(source, tokenizer, cache, progress=False)
            analysis["tokens"][key][split] = token_table(
                *token_losses(model, corpus, context, windows, device), classes
            )
        print(f"[language] analysed {key}", flush=True)
    (out / "analysis.json").write_text(json.dumps(analysis, indent=1))
    diagnostics_figure(results, out / "diagnostics.png")
    return analysis


def diagnostics_figure(results: dict, path: Path) -> bool:
    """Per Mosaic run, one column: bandwidths, decays and retrieval entropies against tokens, one line per layer."""
    plt = pyplot()
    if plt is None:
        return False
    runs = {k: e["curves"]["diagnostics"] for k, e in results.items() if e["curves"].get("diagnostics")}
    if not runs:
        return False
    rows = (
        ("cmem_beta", "C-mem bandwidth beta (log)"),
        ("pmem_beta", "P-mem bandwidth beta (log)"),
        ("cmem_lambda", "C-mem leaky decay lambda"),
        ("cmem_entropy", "C-mem retrieval entropy (last query)"),
        ("pmem_entropy", "P-mem retrieval entropy"),
    )
    fig, axes = plt.subplots(
        len(rows), len(runs), figsize=(3.6 * len(runs), 2.3 * len(rows)), squeeze=False, sharex=True
    )
    for col, (key, diag) in enumerate(runs.items()):
        tokens = [d["step"] for d in diag]
        layers = sorted({name.split("/")[0] for name in diag[0]} - {"step"})
        for row, (metric, label) in enumerate(rows):
            ax = axes[row][col]
            for layer in layers:
                name = f"{layer}/{metric}"
                if name in diag[0]:
                    ax.plot(tokens, [d[name] for d in diag], label=layer)
            if "beta" in metric:
                ax.set_yscale("log")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title(key)
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        axes[-1][col].set_xlabel("step")
    fig.suptitle("Mosaic diagnostics during training (means over heads; normalised entropies, 1 = uniform)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
