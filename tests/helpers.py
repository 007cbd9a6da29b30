"""Shared by the tests: a training run small enough to take seconds on a CPU, and the v2 switches."""

from memory_mosaics.training.config import TrainConfig


def v2_switches(window: int, skip_min: int, skip_max: int) -> dict:
    """Every v2 switch of MosaicConfig (spec section 5): gated keys, adaptive bandwidth, short- and
    long-term memories (window h, long-term skip m in [skip_min, skip_max]) and the SwiGLU P-mem."""
    return dict(
        key_extractor="gated",
        bandwidth="adaptive",
        short_term_window=window,
        long_term_skip_min=skip_min,
        long_term_skip_max=skip_max,
        persistent="swiglu",
    )


def tiny_train_config(train, **overrides) -> TrainConfig:
    """One layer, d 16, 16-token windows on ``train`` (a blank-line-separated text file, also the
    validation text), 10 steps with frequent logs, evaluations and checkpoints; ``overrides`` win."""
    base = dict(
        train=str(train),
        valid=str(train),
        separator="blank",
        tokenizer="bpe:300",
        n_layer=1,
        n_head=2,
        n_embd=16,
        context=16,
        batch_size=2,
        max_steps=10,
        lr=1e-2,
        warmup=1,
        log_interval=1,
        eval_interval=5,
        eval_windows=4,
        checkpoint_interval=5,
        progress=False,
        tensorboard=False,
    )
    return TrainConfig(**{**base, **overrides})
