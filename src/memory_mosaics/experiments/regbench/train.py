"""Training one RegBench model with the authors' harness (seq_icl) protocol.

The model is built through the model registry (:func:`memory_mosaics.models.registry.lookup`); the
optimiser is the harness's AdamW over ONE parameter group (weight decay on every parameter, LayerNorm
weights and the Mosaic's per-head scalars included); every step's learning rate comes from timm's
``CosineLRScheduler`` with ``warmup_prefix=False`` (:func:`timm_cosine_lr`), and the step itself
(learning rate, loss, backward, finite check, clipping, optimiser step) is
:class:`memory_mosaics.training.loop.OptimizerStep`, which raises
:class:`memory_mosaics.training.loop.TrainingDiverged` on a non-finite loss or gradient norm. The
validation loss is measured after every epoch and the weights of the best epoch are scored on the
test set.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ...data.regbench import VOCAB_SIZE, Environment
from ...eval.regbench import batches, evaluate
from ...models.base import LanguageModel
from ...models.registry import lookup
from ...training.loop import OptimizerStep
from .presets import (
    BATCH_SIZE,
    BETAS,
    BLOCK_SIZE,
    MIN_LR_RATIO,
    WARMUP_EPOCH_DIVISOR,
    WARMUP_START_LR,
    HParams,
    steps_per_epoch,
)


def build_model(kind: str, hp: HParams) -> LanguageModel:
    """A model of the registered ``kind`` over the 20 RegBench tokens, configured by the fields of
    ``hp`` that its config class has. Defaults of the harness: the GPT's 1024 positions; the Mosaic's
    regular (non-"eft") retrieval dropout, ``dropout`` in both memories unless ``hp`` says otherwise."""
    config_class, model_class = lookup(kind)
    names = {f.name for f in dataclasses.fields(config_class)}
    values = {"block_size": BLOCK_SIZE, "attn_dropout": hp["dropout"], **hp}
    return model_class(config_class(vocab_size=VOCAB_SIZE, **{k: v for k, v in values.items() if k in names}))


def build_harness_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as the seq_icl harness builds it: one parameter group holding every parameter, so weight
    decay applies to all of them (LayerNorm weights and per-head scalars too); betas :data:`BETAS`."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": params, "weight_decay": weight_decay}], lr=lr, betas=BETAS)


def warmup_steps(per_epoch: int, epochs: int) -> int:
    """The harness's ``warmup_t``: ceil(epochs / 10) epochs of steps (10% of the steps at 200 epochs)."""
    return per_epoch * -(-epochs // WARMUP_EPOCH_DIVISOR)


def timm_cosine_lr(
    step: int, base_lr: float, total: int, warmup: int, lr_min: float, warmup_lr_init: float = WARMUP_START_LR
) -> float:
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


def harness_step(model: torch.nn.Module, hp: HParams, per_epoch: int, epochs: int) -> OptimizerStep:
    """The optimiser step of the harness for ``epochs`` epochs of ``per_epoch`` steps."""
    schedule = partial(
        timm_cosine_lr,
        base_lr=hp["lr"],
        total=epochs * per_epoch,
        warmup=warmup_steps(per_epoch, epochs),
        lr_min=MIN_LR_RATIO * hp["lr"],
    )
    optimizer = build_harness_optimizer(model, hp["lr"], hp["weight_decay"])
    return OptimizerStep(model, optimizer, schedule, grad_clip=hp.get("grad_clip") or 0.0)


def train_one(
    kind: str,
    hp: HParams,
    train: Sequence[Environment],
    val: Sequence[Environment],
    test: Sequence[Environment],
    epochs: int,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "",
) -> dict[str, Any]:
    """Train one model; return its record (test metrics of the best-validation weights).

    Raises :class:`~memory_mosaics.training.loop.TrainingDiverged` if the loss or the gradient norm
    stops being finite."""
    torch.manual_seed(seed)
    model = build_model(kind, hp).to(device)
    per_epoch = steps_per_epoch(len(train))
    optimizer_step = harness_step(model, hp, per_epoch, epochs)
    shuffle = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"val_loss": math.inf, "epoch": -1, "state": None}
    history = []
    step = 0
    start = time.perf_counter()
    bar = tqdm(
        total=epochs * per_epoch, desc=desc or kind, disable=not progress, mininterval=5, leave=True, dynamic_ncols=True
    )
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train), generator=shuffle).tolist()
            epoch_loss, epoch_batches = 0.0, 0
            for _, inputs, labels in batches(train, BATCH_SIZE, order):
                inputs, labels = inputs.to(device), labels.to(device)
                epoch_loss += optimizer_step(step, lambda _: model(inputs, labels)[1]).loss
                epoch_batches += 1
                step += 1
                bar.update(1)
            val_loss = evaluate(model, val, batch_size=BATCH_SIZE, device=device, metrics=False)["loss"]
            history.append(
                {"epoch": epoch + 1, "step": step, "train_loss": epoch_loss / epoch_batches, "val_loss": val_loss}
            )
            if val_loss < best["val_loss"]:
                best = {
                    "val_loss": val_loss,
                    "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
            bar.set_postfix(
                train=f"{epoch_loss / epoch_batches:.3f}", val=f"{val_loss:.3f}", best=f"{best['val_loss']:.3f}"
            )
    finally:
        bar.close()
    train_time = time.perf_counter() - start
    model.load_state_dict(best["state"])
    tic = time.perf_counter()
    scores = evaluate(model, test, batch_size=BATCH_SIZE, device=device)
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
        "steps": step,
        "params": model.num_params(),
        "train_time_s": train_time,
        "test_time_s": time.perf_counter() - tic,
        "hparams": dict(hp),
        "history": history,
    }
