"""Training and testing one MQAR model.

The model comes from the registry (:func:`memory_mosaics.models.registry.lookup`); the loss is the
cross-entropy at the queried positions only (labels != -100), computed from the final features of
those positions alone (a vocabulary of 8192 makes full (B, T, V) logits the most expensive tensor of
a step); each optimiser step is :class:`memory_mosaics.training.loop.OptimizerStep` (raises
:class:`~memory_mosaics.training.loop.TrainingDiverged` on a non-finite loss or gradient norm).
Accuracy: the argmax at every queried position, pooled per test setting (every example of a setting
has the same number of queries, so this is also Zoology's mean of per-example accuracies).
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ...data.mqar import IGNORE_INDEX, MQARData, make_test_set, make_train_set
from ...models.base import LanguageModel
from ...models.registry import lookup
from ...training.loop import OptimizerStep
from ...training.optim import build_optimizer, warmup_cosine
from .presets import ModelSpec, TrainSpec

BETAS = (0.9, 0.999)  # torch's AdamW default, as Zoology's trainer
EVAL_BATCH = 64


def build_model(spec: ModelSpec, vocab_size: int, max_len: int) -> LanguageModel:
    """The registered ``spec.kind`` with ``spec.fields``; a GPT's position table covers ``max_len``."""
    config_class, model_class = lookup(spec.kind)
    extra = {"block_size": max_len} if spec.kind == "gpt" else {}
    return model_class(config_class(vocab_size=vocab_size, **extra, **spec.fields))


def query_logits(model: LanguageModel, inputs: Tensor, labels: Tensor) -> Tensor:
    """Logits (Q, V) of the Q queried positions (labels != -100) of ``inputs`` (B, T), in row-major
    order: the model's blocks on every position, its output head on the queried ones only."""
    model.check_tokens(inputs)
    x = model._embed(inputs)
    for block in model.blocks:
        x = block(x)
    return model._logits(x[labels != IGNORE_INDEX])


def query_loss(model: LanguageModel, inputs: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the queried positions: the loss of ``model(inputs, labels)`` with the
    other positions ignored, without their logits."""
    return F.cross_entropy(query_logits(model, inputs, labels), labels[labels != IGNORE_INDEX])


@torch.no_grad()
def accuracy(model: LanguageModel, data: MQARData, device: str | torch.device = "cpu") -> float:
    """Argmax accuracy over every queried position of ``data`` (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for start in range(0, len(data), EVAL_BATCH):
        inputs = data.inputs[start : start + EVAL_BATCH].to(device)
        labels = data.labels[start : start + EVAL_BATCH].to(device)
        pred = query_logits(model, inputs, labels).argmax(-1)
        correct += int((pred == labels[labels != IGNORE_INDEX]).sum())
        total += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return correct / total


def batch_order(sizes: list[int], batch_size: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """(segment, start) of every batch of one epoch, shuffled: a batch never mixes segments (settings)
    and every example is used once per epoch (the last batch of a segment may be smaller)."""
    batches = [(i, s) for i, n in enumerate(sizes) for s in range(0, n, batch_size)]
    return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]


def _batches(train: list[MQARData], spec: TrainSpec, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Every epoch's batches: examples reshuffled within each segment, then batch order shuffled."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(spec.epochs):
        perms = [torch.randperm(len(d), generator=gen) for d in train]
        for i, start in batch_order([len(d) for d in train], spec.batch_size, gen):
            rows = perms[i][start : start + spec.batch_size]
            yield train[i].inputs[rows], train[i].labels[rows]


def steps_of(spec: TrainSpec) -> int:
    return spec.epochs * sum(math.ceil(n / spec.batch_size) for _, n in spec.train)


def train_one(
    model_spec: ModelSpec,
    spec: TrainSpec,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "",
) -> dict[str, Any]:
    """Train ``model_spec`` on ``spec.train`` and test it on ``spec.test``; the record has
    ``accuracy`` (mean over the test settings), ``by_setting`` ({setting name: accuracy}), the
    parameter count, timings and the loss history. Raises ``TrainingDiverged``."""
    settings = [s for s, _ in spec.train] + list(spec.test)
    vocab = {s.vocab_size for s in settings}
    if len(vocab) != 1:
        raise ValueError(f"MQAR settings of one run must share a vocabulary, got {sorted(vocab)}")
    train = [make_train_set(s, n, spec.data_seed) for s, n in spec.train]
    torch.manual_seed(seed)
    model = build_model(model_spec, vocab.pop(), max(s.seq_len for s in settings)).to(device)
    total = steps_of(spec)
    schedule = partial(warmup_cosine, max_lr=spec.lr, min_lr=0.0, warmup=spec.warmup, total=total)
    optimizer = build_optimizer(model, spec.lr, spec.weight_decay, betas=BETAS)
    optimizer_step = OptimizerStep(model, optimizer, schedule, grad_clip=spec.grad_clip)
    history, window = [], []
    start = time.perf_counter()
    model.train()
    with tqdm(total=total, desc=desc, disable=not progress, mininterval=5, dynamic_ncols=True) as bar:
        for step, (inputs, labels) in enumerate(_batches(train, spec, seed)):
            inputs, labels = inputs.to(device), labels.to(device)
            window.append(optimizer_step(step, lambda _: query_loss(model, inputs, labels)).loss)
            bar.update(1)
            if len(window) == 50 or step == total - 1:
                history.append({"step": step + 1, "train_loss": sum(window) / len(window)})
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}")
                window = []
    train_time = time.perf_counter() - start
    tic = time.perf_counter()
    by_setting = {s.name: accuracy(model, make_test_set(s, spec.num_test), device) for s in spec.test}
    return {
        "accuracy": sum(by_setting.values()) / len(by_setting),
        "by_setting": by_setting,
        "seed": seed,
        "params": model.num_params(),
        "steps": total,
        "train_time_s": train_time,
        "test_time_s": time.perf_counter() - tic,
        "final_train_loss": history[-1]["train_loss"],
        "history": history,
    }
