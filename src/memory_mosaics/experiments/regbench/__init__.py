"""RegBench in-context language learning (Memory Mosaics figure 9): ``mosaics reproduce regbench``.

Trains :class:`MosaicLM` and :class:`GPTLM` on N random regular languages (one fixed prompt each,
:mod:`memory_mosaics.data.regbench`), keeps the checkpoint with the best validation loss and scores
it on the fixed test set with :mod:`memory_mosaics.eval.regbench_metrics` (accuracy of the argmax and
total variation distance to the true next-token distribution, pooled over all non-pad positions).

Protocol (spec ``docs/regbench.md`` section 3, the authors' seq_icl harness): next-token
cross-entropy (separator and pad labels ignored); batches of 32 prompts reshuffled every epoch, padded
per batch; AdamW with betas (0.9, 0.999) over ONE parameter group, so weight decay applies to every
parameter, LayerNorm weights and the Mosaic's per-head scalars included (:func:`build_harness_optimizer`);
the learning rate of every step from timm's ``CosineLRScheduler`` with ``warmup_prefix=False``
(:func:`timm_cosine_lr`: linear warm-up from 1e-6 over the first ceil(epochs / 10) epochs, i.e. 10% of
the steps at 200 epochs, and a cosine to 0.1 x lr computed from step 0, so the lr right after warm-up
is already ~0.98 of its peak); gradient norm clipped at 1.0; validation loss after every epoch; the
best one's weights are tested. Every preset uses this protocol.

Presets (the exact numbers are in :data:`PRESETS`):

* ``paper``: N in {100, 500, 1000, 2500, 40000}, 200 epochs, the paper's configs (Mosaic d 128,
  8 heads, 2 layers, P-mem 7d/2, dropout 0.05, lr 5e-4; transformer d 128, 8 layers, 2 heads,
  dropout 0.1), 500 validation environments. Needs a GPU.
* ``cpu``: N in {100, 500, 1000}; the same 224 optimiser steps for every N (56 / 14 / 7 epochs),
  2-layer models of width 64 with the same 12 d^2 weights per block (the transformer also carries its
  learned position table), 4 Mosaic heads and no dropout on the retrieval weights (both for CPU
  speed), validation on the first 100 validation environments; lr 4e-3 (Mosaic) and 1e-3
  (transformer), chosen by validation loss in a pilot at N = 100 (docs/regbench.md). Optimiser,
  schedule (by epochs: warm-up ceil(E / 10) epochs), clipping and checkpointing as in ``paper``.

``--grid`` runs a small search per model and N (first seed only) over :data:`GRIDS` (or
``--grid-spec``), selects the point with the best validation loss, and runs the remaining seeds
with it; test metrics never enter the selection.

Outputs in ``--out``: ``results.json`` (written after every run; ``--resume`` skips runs already in
it) and ``figure9.png`` (accuracy and TVD against N, log x-axis, with the published Mosaic and
transformer numbers and the in-context 3-gram).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.regbench import (
    IGNORE_INDEX,
    VOCAB_SIZE,
    Environment,
    collate,
    inputs_and_labels,
    make_splits,
)
from ..eval.regbench_metrics import (
    accuracy_and_tvd,
    evaluate_predictor,
    ngram_predictor,
    oracle_predictor,
    true_distributions_batch,
)
from ..models.base import LanguageModel
from ..models.gpt import GPTConfig, GPTLM
from ..models.mosaic import MosaicConfig, MosaicLM
from ..training.optim import set_lr

EXPERIMENT = "regbench"
HELP = "RegBench in-context language learning (figure 9): accuracy and TVD against the number of training automata"

MODELS = ("mosaic", "gpt")
MODEL_LABELS = {"mosaic": "Memory Mosaic", "gpt": "Transformer (GPT-2)"}

# Training protocol shared by every preset (spec section 3).
BATCH_SIZE = 32
WARMUP_EPOCH_DIVISOR = 10  # warm-up = ceil(epochs / 10) epochs of steps (the harness's warmup_t)
WARMUP_START_LR = 1e-6
MIN_LR_RATIO = 0.1
BETAS = (0.9, 0.999)  # torch's AdamW default, which the harness keeps
BLOCK_SIZE = 1024  # GPT positions; the longest possible prompt has 19 * 49 + 18 = 949 tokens

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "num_train": [100, 500, 1000],
        "seeds": [0, 1],
        # the same 224 optimiser steps at every N (ceil(N / 32) steps per epoch)
        "epochs": {100: 56, 500: 14, 1000: 7},
        "num_test": 500,
        "num_val": 100,
        "models": {
            "mosaic": {"n_embd": 64, "n_layer": 2, "n_head": 4, "pmem_size": 224, "dropout": 0.05,
                       "attn_dropout": 0.0, "lr": 4e-3, "weight_decay": 0.1, "grad_clip": 1.0},
            "gpt": {"n_embd": 64, "n_layer": 2, "n_head": 2, "dropout": 0.1,
                    "lr": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
        },
    },
    "paper": {
        "num_train": [100, 500, 1000, 2500, 40000],
        "seeds": [0, 1],
        "epochs": 200,
        "num_test": 500,
        "num_val": 500,
        "models": {
            "mosaic": {"n_embd": 128, "n_layer": 2, "n_head": 8, "pmem_size": 448, "dropout": 0.05,
                       "attn_dropout": 0.05, "lr": 5e-4, "weight_decay": 0.1, "grad_clip": 1.0},
            "gpt": {"n_embd": 128, "n_layer": 8, "n_head": 2, "dropout": 0.1,
                    "lr": 5e-4, "weight_decay": 0.1, "grad_clip": 1.0},
        },
    },
    "quick": {  # for tests: tiny models, a handful of steps
        "num_train": [16],
        "seeds": [0],
        "epochs": 2,
        "num_test": 8,
        "num_val": 8,
        "models": {
            "mosaic": {"n_embd": 16, "n_layer": 1, "n_head": 2, "pmem_size": 8, "dropout": 0.0,
                       "attn_dropout": 0.0, "lr": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
            "gpt": {"n_embd": 16, "n_layer": 1, "n_head": 2, "dropout": 0.0,
                    "lr": 1e-3, "weight_decay": 0.1, "grad_clip": 1.0},
        },
    },
}

# Hyper-parameter grids of --grid (a small subset of the paper's search space, spec section 3).
GRIDS: dict[str, dict[str, list]] = {
    "cpu": {"lr": [1e-3, 2e-3, 4e-3], "weight_decay": [0.01, 0.1]},
    "paper": {"lr": [1e-4, 2.5e-4, 5e-4], "weight_decay": [0.01, 0.1]},
    "quick": {"lr": [1e-3, 2e-3]},
}
GRID_KEYS = {"lr": float, "weight_decay": float, "n_embd": int, "n_layer": int, "n_head": int,
             "pmem_size": int, "dropout": float, "attn_dropout": float, "pmem_attn_dropout": float,
             "grad_clip": float}

# What results.json records of the protocol (and what --resume requires to reuse a run).
PROTOCOL = {
    "batch_size": BATCH_SIZE,
    "optimizer": "torch AdamW, one parameter group: weight decay on every parameter",
    "betas": list(BETAS),
    "schedule": "timm CosineLRScheduler, warmup_prefix=False, per step: t_initial = all steps, "
                "warmup_t = ceil(epochs / 10) epochs, lr_min = min_lr_ratio x lr",
    "warmup_epoch_divisor": WARMUP_EPOCH_DIVISOR,
    "warmup_start_lr": WARMUP_START_LR,
    "min_lr_ratio": MIN_LR_RATIO,
    "gpt_block_size": BLOCK_SIZE,
}

# Published numbers (spec section 4, read off the Memory Mosaics figure 9).
PUBLISHED = {
    "mosaic": {
        "accuracy": {100: 0.925, 500: 0.929, 1000: 0.934, 2500: 0.942, 40000: 0.96},
        "tvd": {100: 0.568, 500: 0.255, 1000: 0.215, 2500: 0.185, 40000: 0.122},
    },
    "gpt": {
        "accuracy": {100: 0.523, 500: 0.543, 1000: 0.533, 2500: 0.925, 40000: 0.951},
        "tvd": {100: 0.683, 500: 0.643, 1000: 0.630, 2500: 0.232, 40000: 0.144},
    },
}


# ----------------------------------------------------------------------------------- models


def build_model(kind: str, hp: dict[str, Any]) -> LanguageModel:
    """A MosaicLM or GPTLM over the 20 RegBench tokens from the hyper-parameters ``hp``."""
    if kind == "mosaic":
        # the harness's regular (non-"eft") model: the same retrieval dropout in both memories
        attn_dropout = hp.get("attn_dropout", hp["dropout"])
        return MosaicLM(MosaicConfig(
            vocab_size=VOCAB_SIZE, n_layer=hp["n_layer"], n_head=hp["n_head"], n_embd=hp["n_embd"],
            pmem_size=hp.get("pmem_size"), dropout=hp["dropout"], attn_dropout=attn_dropout,
            pmem_attn_dropout=hp.get("pmem_attn_dropout", attn_dropout),
        ))
    if kind == "gpt":
        return GPTLM(GPTConfig(
            vocab_size=VOCAB_SIZE, block_size=hp.get("block_size", BLOCK_SIZE), n_layer=hp["n_layer"],
            n_head=hp["n_head"], n_embd=hp["n_embd"], dropout=hp["dropout"], bias=False,
        ))
    raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODELS)}")


# ----------------------------------------------------------------------------------- optimiser


def build_harness_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as the seq_icl harness builds it: one parameter group holding every parameter, so weight
    decay applies to all of them (LayerNorm weights and per-head scalars too); betas :data:`BETAS`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "weight_decay": weight_decay}], lr=lr, betas=BETAS)


def warmup_steps(steps_per_epoch: int, epochs: int) -> int:
    """The harness's ``warmup_t``: ceil(epochs / 10) epochs of steps (10% of the steps at 200 epochs)."""
    return steps_per_epoch * -(-epochs // WARMUP_EPOCH_DIVISOR)


def timm_cosine_lr(step: int, base_lr: float, total: int, warmup: int, lr_min: float,
                   warmup_lr_init: float = WARMUP_START_LR) -> float:
    """Learning rate of optimiser step ``step`` (0-based) under timm's ``CosineLRScheduler(t_initial=total,
    lr_min=lr_min, warmup_t=warmup, warmup_lr_init=warmup_lr_init, warmup_prefix=False)`` with one cycle
    (cycle_mul = cycle_decay = cycle_limit = k_decay = 1), stepped per update as the harness does
    (step 0 runs at ``warmup_lr_init``).

    * ``step < warmup``: linear, ``warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup``;
      it never reaches ``base_lr`` itself.
    * ``warmup <= step < total``: ``lr_min + (base_lr - lr_min) (1 + cos(pi step / total)) / 2``. The
      cosine's clock starts at step 0, not at the end of the warm-up (``warmup_prefix=False``), so at
      ``step = warmup = total / 10`` the rate is already ``lr_min + 0.976 (base_lr - lr_min)``.
    * ``step >= total``: the cycle count ``step // total`` reaches the cycle limit 1, and the rate is
      ``lr_min`` from then on.
    """
    if step < warmup:
        return warmup_lr_init + step * (base_lr - warmup_lr_init) / warmup
    if step >= total:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1.0 + math.cos(math.pi * step / total))


# ----------------------------------------------------------------------------------- data


def batches(envs: Sequence[Environment], batch_size: int, order: Sequence[int] | None = None):
    """Yield (envs, inputs (B, T), labels (B, T)) padded per batch, in ``order`` (default: as given)."""
    order = range(len(envs)) if order is None else order
    order = list(order)
    for start in range(0, len(order), batch_size):
        chunk = [envs[i] for i in order[start : start + batch_size]]
        inputs, labels = collate([inputs_and_labels(env.tokens) for env in chunk])
        yield chunk, inputs, labels


def by_length(envs: Sequence[Environment]) -> list[int]:
    """Indices sorted by prompt length (evaluation only: less padding, same pooled metrics)."""
    return sorted(range(len(envs)), key=lambda i: len(envs[i].tokens))


def generator_stats(envs: Sequence[Environment]) -> dict[str, Any]:
    """Prompt length, automaton size and branching of ``envs`` (compare with spec section 1)."""
    lengths = np.array([len(env.tokens) for env in envs])
    states = np.array([env.automaton.num_states for env in envs])
    letters = [len(np.unique(np.nonzero(env.automaton.transitions >= 0)[1])) for env in envs]
    degrees = np.concatenate([(env.automaton.transitions >= 0).sum(axis=1) for env in envs])
    shares = np.bincount(degrees, minlength=4)[1:4] / len(degrees)
    return {
        "environments": len(envs),
        "prompt_tokens_mean": float(lengths.mean()),
        "prompt_tokens_min": int(lengths.min()),
        "prompt_tokens_max": int(lengths.max()),
        "states_mean": float(states.mean()),
        "letters_mean": float(np.mean(letters)),
        "branching_1_2_3": [float(s) for s in shares],
    }


def baselines(envs: Sequence[Environment], max_order: int = 4) -> dict[str, dict]:
    """In-context n-gram (1..max_order) and oracle metrics on ``envs``."""
    report = {f"{n}-gram": evaluate_predictor(envs, ngram_predictor(n)) for n in range(1, max_order + 1)}
    report["oracle"] = evaluate_predictor(envs, oracle_predictor)
    return report


# ----------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, envs: Sequence[Environment], batch_size: int = BATCH_SIZE,
             device: str | torch.device = "cpu", metrics: bool = True) -> dict[str, float]:
    """Loss and (with ``metrics``) pooled accuracy / TVD of ``model`` on ``envs``.

    ``model(inputs)`` must return logits (B, T, 20). The model's distribution at each position is the
    softmax over the 20 tokens; accuracy and TVD are pooled over every non-pad input position (the
    metrics module's definition), the loss is the mean cross-entropy over the training labels
    (separators and pads ignored).
    """
    was_training = model.training
    model.eval()
    loss_sum, label_count = 0.0, 0
    sums = {"accuracy": 0.0, "tvd": 0.0, "l1": 0.0}
    positions = 0
    try:
        for chunk, inputs, labels in batches(envs, batch_size, by_length(envs)):
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs).double()  # fp64 softmax: metrics exact to ~1e-15
            valid = labels != IGNORE_INDEX
            loss_sum += float(F.cross_entropy(logits[valid], labels[valid], reduction="sum"))
            label_count += int(valid.sum())
            if metrics:
                probs = torch.softmax(logits, dim=-1).cpu().numpy()
                true, mask = true_distributions_batch([e.automaton for e in chunk], [e.tokens for e in chunk],
                                                      length=inputs.shape[1])
                batch = accuracy_and_tvd(probs, true, mask)
                for key in sums:
                    sums[key] += batch[key] * batch["positions"]
                positions += batch["positions"]
    finally:
        model.train(was_training)
    result = {"loss": loss_sum / max(label_count, 1)}
    if metrics:
        result.update({key: value / max(positions, 1) for key, value in sums.items()})
        result["positions"] = positions
    return result


# ----------------------------------------------------------------------------------- training


def train_one(kind: str, hp: dict[str, Any], train: Sequence[Environment], val: Sequence[Environment],
              test: Sequence[Environment], epochs: int, seed: int, device: str = "cpu",
              progress: bool = True, desc: str = "") -> dict[str, Any]:
    """Train one model with the RegBench protocol; return its record (test metrics of the best-val weights)."""
    torch.manual_seed(seed)
    model = build_model(kind, hp).to(device)
    optimizer = build_harness_optimizer(model, hp["lr"], hp["weight_decay"])
    steps_per_epoch = math.ceil(len(train) / BATCH_SIZE)
    total = epochs * steps_per_epoch
    warmup = warmup_steps(steps_per_epoch, epochs)
    shuffle = torch.Generator().manual_seed(seed)
    best = {"val_loss": math.inf, "epoch": -1, "state": None}
    history = []
    step = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc or kind, disable=not progress, mininterval=5, leave=True, dynamic_ncols=True)
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train), generator=shuffle).tolist()
            epoch_loss, epoch_batches = 0.0, 0
            for _, inputs, labels in batches(train, BATCH_SIZE, order):
                lr = timm_cosine_lr(step, hp["lr"], total, warmup, MIN_LR_RATIO * hp["lr"])
                set_lr(optimizer, lr)
                _, loss = model(inputs.to(device), labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if hp.get("grad_clip"):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
                optimizer.step()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"{desc or kind}: non-finite training loss at step {step}")
                epoch_loss += loss_value
                epoch_batches += 1
                step += 1
                bar.update(1)
            val_loss = evaluate(model, val, device=device, metrics=False)["loss"]
            history.append({"epoch": epoch + 1, "step": step, "train_loss": epoch_loss / epoch_batches,
                            "val_loss": val_loss})
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch + 1,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            bar.set_postfix(train=f"{epoch_loss / epoch_batches:.3f}", val=f"{val_loss:.3f}", best=f"{best['val_loss']:.3f}")
    finally:
        bar.close()
    train_time = time.perf_counter() - start
    model.load_state_dict(best["state"])
    tic = time.perf_counter()
    scores = evaluate(model, test, device=device)
    return {
        "model": kind,
        "num_train": len(train),
        "seed": seed,
        "accuracy": scores["accuracy"],
        "tvd": scores["tvd"],
        "l1": scores["l1"],
        "test_loss": scores["loss"],
        "test_positions": scores["positions"],
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "epochs": epochs,
        "steps": total,
        "params": model.num_params(),
        "train_time_s": train_time,
        "test_time_s": time.perf_counter() - tic,
        "hparams": dict(hp),
        "history": history,
        "model_ref": model,  # removed before writing JSON
    }


# ----------------------------------------------------------------------------------- summary and figure


def summarise(runs: Sequence[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {N: {accuracy/tvd mean, std (ddof 1), min, max, seeds}}} over the main (non-grid) runs."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        if run.get("grid_only"):
            continue
        summary.setdefault(run["model"], {}).setdefault(str(run["num_train"]), []).append(run)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, per_n in summary.items():
        out[kind] = {}
        for n, group in sorted(per_n.items(), key=lambda item: int(item[0])):
            row: dict[str, Any] = {"seeds": sorted(r["seed"] for r in group), "params": group[0]["params"]}
            for key in ("accuracy", "tvd", "best_val_loss", "train_time_s"):
                values = np.array([r[key] for r in group], dtype=float)
                row[f"{key}_mean"] = float(values.mean())
                row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                row[f"{key}_min"] = float(values.min())
                row[f"{key}_max"] = float(values.max())
            out[kind][n] = row
    return out


def plot_figure(results: dict, path: str | Path) -> bool:
    """Figure 9: accuracy and TVD against N (log x) for our runs (mean, min-max bars), the published
    Mosaic and transformer numbers (dashed) and the in-context 3-gram (dotted). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    colours = {"mosaic": "tab:blue", "gpt": "tab:orange"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, title in zip(axes, ("accuracy", "tvd"), ("accuracy (higher is better)", "total variation distance (lower is better)")):
        for kind in MODELS:
            pub = PUBLISHED[kind][metric]
            ax.plot(list(pub), list(pub.values()), "--", marker="s", mfc="none", color=colours[kind], alpha=0.6,
                    label=f"{MODEL_LABELS[kind]}, published")
            rows = results.get("summary", {}).get(kind, {})
            if rows:
                ns = [int(n) for n in rows]
                mean = np.array([rows[n][f"{metric}_mean"] for n in rows])
                lo = mean - np.array([rows[n][f"{metric}_min"] for n in rows])
                hi = np.array([rows[n][f"{metric}_max"] for n in rows]) - mean
                ax.errorbar(ns, mean, yerr=[lo, hi], marker="o", capsize=3, color=colours[kind],
                            label=f"{MODEL_LABELS[kind]}, ours ({rows[str(ns[0])]['params'] / 1e3:.0f}k params)")
        gram = results.get("baselines", {}).get("3-gram")
        if gram:
            ax.axhline(gram[metric], color="grey", ls=":", label="in-context 3-gram")
        ax.set_xscale("log")
        ax.set_xlabel("number of training automata N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    preset = results.get("preset", "")
    fig.suptitle(f"RegBench (figure 9), preset {preset}: mean over seeds, bars = min..max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------- command line


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


def parse_grid_spec(text: str) -> dict[str, list]:
    """'lr=1e-4,5e-4;weight_decay=0.01,0.1' -> {'lr': [1e-4, 5e-4], 'weight_decay': [0.01, 0.1]}."""
    grid: dict[str, list] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        key = key.strip()
        if key not in GRID_KEYS or not values.strip():
            raise ValueError(f"bad --grid-spec entry {part!r}; keys: {', '.join(GRID_KEYS)}")
        try:
            grid[key] = [GRID_KEYS[key](v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"bad value in --grid-spec entry {part!r}") from None
    if not grid:
        raise ValueError("--grid-spec is empty")
    return grid


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, in a fixed order."""
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def add_arguments(parser) -> None:
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                        help="cpu: N<=1000, 224 steps per run, width-64 models; paper: the paper's protocol (GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny models and data, a few steps (tests)")
    parser.add_argument("--num-train", help="comma-separated numbers of training automata (default: the preset's)")
    parser.add_argument("--seeds", help="comma-separated training seeds (model init and batch order)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the environments (default 0, as the reference)")
    parser.add_argument("--epochs", type=int, help="epochs for every N (default: the preset's)")
    parser.add_argument("--models", default="mosaic,gpt", help="comma-separated subset of mosaic,gpt")
    parser.add_argument("--num-val", type=int, help="validation environments used (default: the preset's)")
    parser.add_argument("--grid", action="store_true", help="select hyper-parameters on validation over the grid")
    parser.add_argument("--grid-spec", help="grid for --grid, e.g. 'lr=5e-4,1e-3;weight_decay=0.01,0.1'")
    parser.add_argument("--out", default="results/regbench", help="output directory (results.json, figure9.png)")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.json")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (e.g. 1 on a shared machine)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve(args) -> dict[str, Any]:
    """The effective settings of a run from the preset and the command-line overrides."""
    preset_name = "quick" if args.quick else args.preset
    preset = copy.deepcopy(PRESETS[preset_name])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for kind in models:
        if kind not in MODELS:
            raise ValueError(f"unknown model {kind!r} in --models; choose from {', '.join(MODELS)}")
    if not models:
        raise ValueError("--models is empty")
    num_train = _int_list(args.num_train, "num-train") if args.num_train else preset["num_train"]
    if any(n <= 0 for n in num_train):
        raise ValueError(f"--num-train values must be positive, got {num_train}")
    seeds = _int_list(args.seeds, "seeds") if args.seeds else preset["seeds"]
    if args.epochs is not None and args.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    epochs_spec = preset["epochs"]
    epochs = {}
    for n in num_train:
        if args.epochs is not None:
            epochs[n] = args.epochs
        elif isinstance(epochs_spec, dict):
            # N outside the preset's table: keep the preset's step budget
            steps = max(e * math.ceil(k / BATCH_SIZE) for k, e in epochs_spec.items())
            epochs[n] = epochs_spec.get(n, max(1, round(steps / math.ceil(n / BATCH_SIZE))))
        else:
            epochs[n] = epochs_spec
    num_val = preset["num_val"] if args.num_val is None else args.num_val
    if num_val <= 0 or num_val > 500:
        raise ValueError(f"--num-val must be in 1..500, got {num_val}")
    grid = None
    if args.grid or args.grid_spec:
        grid = parse_grid_spec(args.grid_spec) if args.grid_spec else GRIDS[preset_name]
    return {
        "preset": preset_name,
        "models": models,
        "num_train": num_train,
        "seeds": seeds,
        "data_seed": args.data_seed,
        "epochs": epochs,
        "num_test": preset["num_test"],
        "num_val": num_val,
        "hparams": {kind: preset["models"][kind] for kind in models},
        "grid": grid,
        "protocol": PROTOCOL,
    }


def _json_ready(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "model_ref"}


def run(args) -> int:
    settings = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    progress = not args.no_progress

    previous: list[dict] = []
    if args.resume and results_path.is_file():
        old = json.loads(results_path.read_text())
        if old.get("settings", {}).get("protocol") == PROTOCOL:
            previous = old.get("runs", [])
        else:
            print(f"--resume: {results_path} was trained under another protocol; training again", flush=True)

    num_test, num_val = settings["num_test"], settings["num_val"]
    tic = time.perf_counter()
    splits = make_splits(max(settings["num_train"]), seed=settings["data_seed"], num_test=num_test, num_val=500
                         if settings["preset"] != "quick" else num_val)
    test, val = splits["test"], splits["validation"][:num_val]
    print(f"regbench: {len(splits['train'])} train / {len(val)} validation / {len(test)} test environments "
          f"(data seed {settings['data_seed']}, {time.perf_counter() - tic:.1f}s); device {device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    stats = {name: generator_stats(envs) for name, envs in (("test", test), ("train", splits["train"]))}
    baseline_scores = baselines(test)
    print("baselines on the test set: " + ", ".join(
        f"{k} {v['accuracy']:.3f}/{v['tvd']:.3f}" for k, v in baseline_scores.items()), flush=True)

    results: dict[str, Any] = {
        "experiment": EXPERIMENT,
        "preset": settings["preset"],
        "settings": {**settings, "epochs": {str(k): v for k, v in settings["epochs"].items()}},
        "device": device,
        "threads": torch.get_num_threads(),
        "generator_stats": stats,
        "baselines": baseline_scores,
        "published": {k: {m: {str(n): v for n, v in d.items()} for m, d in pub.items()} for k, pub in PUBLISHED.items()},
        "runs": [],
        "selection": [],
    }

    def save() -> None:
        results["summary"] = summarise(results["runs"])
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, results_path)

    def done(kind, n, seed, hp) -> dict | None:
        for r in results["runs"]:
            if r["model"] == kind and r["num_train"] == n and r["seed"] == seed and r["hparams"] == hp:
                return r
        return None

    def execute(kind, n, seed, hp, grid_only=False) -> dict:
        found = done(kind, n, seed, hp)
        if found is None:  # --resume: reuse a finished run of the same settings
            for r in previous:
                if (r["model"], r["num_train"], r["seed"], r["hparams"], r["epochs"]) == (
                        kind, n, seed, hp, settings["epochs"][n]):
                    found = dict(r)
                    found.pop("grid_only", None)
                    results["runs"].append(found)
                    print(f"{kind} N={n} seed={seed}: reused from {results_path}", flush=True)
                    break
        if found is not None:
            if grid_only:
                found["grid_only"] = True
            else:
                found.pop("grid_only", None)
            save()
            return found
        desc = f"{kind} N={n} seed={seed}"
        record = train_one(kind, hp, splits["train"][:n], val, test, settings["epochs"][n], seed, device,
                           progress, desc)
        record = _json_ready(record)
        if grid_only:
            record["grid_only"] = True
        results["runs"].append(record)
        save()
        print(f"{desc}: accuracy {record['accuracy']:.3f} tvd {record['tvd']:.3f} best val {record['best_val_loss']:.4f}"
              f" (epoch {record['best_epoch']}/{record['epochs']}), {record['params']} params, "
              f"{record['train_time_s']:.0f}s", flush=True)
        return record

    save()
    for n in settings["num_train"]:
        for kind in settings["models"]:
            base = dict(settings["hparams"][kind])
            if settings["grid"]:
                trials = []
                for point in grid_points(settings["grid"]):
                    hp = {**base, **point}
                    rec = execute(kind, n, settings["seeds"][0], hp, grid_only=True)
                    trials.append({"point": point, "best_val_loss": rec["best_val_loss"]})
                chosen = min(trials, key=lambda t: t["best_val_loss"])
                results["selection"].append({"model": kind, "num_train": n, "trials": trials, "chosen": chosen["point"]})
                base = {**base, **chosen["point"]}
                rec = done(kind, n, settings["seeds"][0], base)
                rec.pop("grid_only", None)
                save()
            for seed in settings["seeds"]:
                execute(kind, n, seed, base)
    save()
    if plot_figure(results, out / "figure9.png"):
        print(f"wrote {results_path} and {out / 'figure9.png'}")
    else:
        print(f"wrote {results_path} (matplotlib missing: no figure)")
    for kind, rows in results["summary"].items():
        for n, row in rows.items():
            print(f"{kind:6s} N={n:>5s}: accuracy {row['accuracy_mean']:.3f} +- {row['accuracy_std']:.3f}, "
                  f"tvd {row['tvd_mean']:.3f} +- {row['tvd_std']:.3f} ({len(row['seeds'])} seeds, {row['params']} params)")
    return 0
