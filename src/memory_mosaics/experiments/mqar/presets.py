"""The MQAR models and presets, as dataclasses.

Models (equal block weights, 2 layers): ``mosaic`` (v1 Memory Mosaic, 12 d^2 per block with the
bank P-mem of 3.5 d pairs), ``mosaic_v2`` (the v2 switches: gated keys, adaptive bandwidth,
short/long-term memories, SwiGLU P-mem, still 12 d^2 per block plus the 2 d^2 of the concatenated
output and the gate maps) and ``gpt`` (GPT-2, 12 d^2 per block, learned positions). Heads: d / 16
for the Mosaics (the paper's head size on RegBench), one for GPT-2 (Zoology's attention).

Training follows Zoology's reference MQAR config (``zoology/experiments/mqar_example_configs/
original_mqar_configs.py``): one model per (kind, width) trained on a MIXTURE of settings (64/4,
128/8, 256/16, 256/32, 256/64: sequence length / pairs), every batch from one setting, AdamW with
weight decay 0.1 and a cosine schedule to 0, then tested on fixed test sets of other settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...data.mqar import MQARSetting

MODELS = ("mosaic", "mosaic_v2", "gpt")
V2_SWITCHES = {"key_extractor": "gated", "bandwidth": "adaptive", "short_term_window": 256, "persistent": "swiglu"}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model kind (``mosaic`` / ``gpt``) and its config fields (``n_embd``, switches...)."""

    kind: str
    fields: dict[str, Any]


def model_spec(name: str, width: int, n_layer: int = 2) -> ModelSpec:
    """The ``name`` model of :data:`MODELS` at width ``width``: no dropout, heads as the module docstring."""
    if name == "gpt":
        return ModelSpec("gpt", {"n_embd": width, "n_layer": n_layer, "n_head": 1, "dropout": 0.0})
    fields = {"n_embd": width, "n_layer": n_layer, "n_head": max(1, width // 16), "dropout": 0.0, "attn_dropout": 0.0}
    return ModelSpec("mosaic", {**fields, **(V2_SWITCHES if name == "mosaic_v2" else {})})


@dataclass(frozen=True)
class TrainSpec:
    """What one MQAR run trains on and how: ``train`` (setting, number of examples) pairs, each a fixed
    training set; ``epochs`` passes over all of them in batches of ``batch_size`` from one setting
    each (shuffled); AdamW (``lr``, ``weight_decay``, betas 0.9/0.999, decay on >= 2-dim tensors);
    ``warmup`` linear steps then a cosine to 0; gradient norm clipped at ``grad_clip``; then tested
    on ``num_test`` fixed examples of every ``test`` setting."""

    train: tuple[tuple[MQARSetting, int], ...]
    test: tuple[MQARSetting, ...]
    num_test: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    warmup: int = 0
    grad_clip: float = 1.0
    data_seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "train": [{**s.to_json(), "num_examples": n} for s, n in self.train],
            "test": [s.to_json() for s in self.test],
            **{k: getattr(self, k) for k in ("num_test", "epochs", "batch_size", "lr", "weight_decay", "warmup")},
            **{k: getattr(self, k) for k in ("grad_clip", "data_seed")},
        }


def _mixture(scale: int, vocab: int) -> tuple[tuple[MQARSetting, int], ...]:
    """Zoology's reference training mixture, its example counts divided by ``scale``."""
    counts = ((64, 4, 100_000), (128, 8, 20_000), (256, 16, 20_000), (256, 32, 20_000), (256, 64, 20_000))
    return tuple((MQARSetting(L, P, vocab), n // scale) for L, P, n in counts)


def mqar_settings(vocab: int, pairs: tuple[tuple[int, int], ...]) -> tuple[MQARSetting, ...]:
    """One :class:`MQARSetting` per (L, P) of ``pairs``, over ``vocab`` tokens."""
    return tuple(MQARSetting(L, P, vocab) for L, P in pairs)


# The sweep (pairs = L / 4, the harder settings of Zoology's reference test list) and the
# settings of Zoology's figure 2 (published curves, docs/mqar.md).
HARD = ((64, 16), (128, 32), (256, 64), (512, 128))
FIGURE2 = ((64, 4), (128, 8), (256, 16), (512, 64))


@dataclass(frozen=True)
class Preset:
    widths: list[int]
    seeds: list[int]
    train: TrainSpec  # without lr: each model's lr is in ``lrs``
    lrs: dict[str, float]


VOCAB = 8192  # Zoology's vocabulary
TESTS = mqar_settings(VOCAB, HARD + FIGURE2)  # the test settings of the cpu and paper presets

# fmt: off
PRESETS: dict[str, Preset] = {
    # 1/25 of Zoology's training examples, one epoch, 250 test examples per setting
    "cpu": Preset(
        widths=[32, 64, 128], seeds=[0, 1],
        train=TrainSpec(_mixture(25, VOCAB), TESTS, num_test=250, epochs=1, batch_size=32,
                        lr=0.0, warmup=20),
        lrs={"mosaic": 3e-3, "mosaic_v2": 3e-3, "gpt": 3e-3}),
    # Zoology's reference mixture (180k examples), 32 epochs of batches of 256, 1000 test examples per setting
    "paper": Preset(
        widths=[64, 128, 256, 512], seeds=[0],
        train=TrainSpec(_mixture(1, VOCAB), TESTS, num_test=1000, epochs=32, batch_size=256,
                        lr=0.0),
        lrs={"mosaic": 1e-3, "mosaic_v2": 1e-3, "gpt": 1e-3}),
    "quick": Preset(
        widths=[16], seeds=[0],
        train=TrainSpec(((MQARSetting(16, 2, 64), 64), (MQARSetting(32, 4, 64), 32)),
                        mqar_settings(64, ((16, 2), (32, 8))), num_test=16, epochs=1, batch_size=16, lr=0.0),
        lrs={"mosaic": 1e-3, "mosaic_v2": 1e-3, "gpt": 1e-3}),
}
# fmt: on


def single_setting(
    seq_len: int, num_pairs: int, num_train: int, num_test: int, lr: float, vocab_size: int = VOCAB, **fields
) -> TrainSpec:
    """A :class:`TrainSpec` that trains and tests on one setting (e.g. the ablations' hard setting
    L = 256, P = 64): one epoch over ``num_train`` examples, batches of 32, 20 warm-up steps;
    ``fields`` override any other field."""
    setting = MQARSetting(seq_len, num_pairs, vocab_size)
    base = dict(train=((setting, num_train),), test=(setting,), num_test=num_test, epochs=1, batch_size=32, lr=lr)
    return TrainSpec(**{**base, "warmup": 20, **fields})
