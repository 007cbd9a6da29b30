"""Checks shared by the commands (a helper module: no ``HELP``, so no subcommand)."""

from __future__ import annotations

import json
from pathlib import Path


def check_saved_model(ckpt: Path) -> None:
    """Refuse, naming the file, a checkpoint whose files do not match its manifest (sizes, SHA-256) or
    whose ``config.json`` is not a JSON object (before loading)."""
    from ..training.checkpoint import verify_checkpoint

    problem = verify_checkpoint(ckpt)
    if problem:
        raise ValueError(f"{problem}; the checkpoint is damaged: use another one")
    path = Path(ckpt) / "config.json"
    if not path.is_file():
        return  # the loader says which file is missing
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); the checkpoint is damaged: use another one") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} is not a model config (a JSON object, not a {type(data).__name__}); "
            "the checkpoint is damaged: use another one"
        )


def load_checkpoint_tokenizer(ckpt: Path):
    """The checkpoint's tokenizer; a damaged ``tokenizer.json`` is named instead of a traceback (the
    tokenizers library raises a bare ``Exception``)."""
    from ..data.tokenizers import SPEC_FILE, load_tokenizer

    try:
        return load_tokenizer(ckpt)
    except Exception as err:
        if not isinstance(err, (AttributeError, KeyError, TypeError)) and type(err) is not Exception:
            raise
        path = Path(ckpt) / SPEC_FILE
        raise ValueError(f"{path} is not a valid tokenizer file ({err}); use another checkpoint") from None


# Peak memory of a forward pass, per token, layer and channel: a Mosaic's prefill measured 58-64 bytes
# in fp32 on the CPU (prompts of 20k-40k tokens); 80 leaves a margin. Logits cost 12 bytes per entry
# (the fp32 logits, their float copy and the cross-entropy's).
BYTES_PER_TOKEN_LAYER_CHANNEL = 80
BYTES_PER_LOGIT = 12


def forward_bytes(config, tokens: int, logit_rows: int) -> int:
    """Rough peak memory (bytes) of a forward pass of ``config``'s model over ``tokens`` tokens that
    computes ``logit_rows`` rows of logits."""
    return BYTES_PER_TOKEN_LAYER_CHANNEL * tokens * config.n_layer * config.n_embd + (
        BYTES_PER_LOGIT * logit_rows * config.vocab_size
    )


def check_forward_fits(config, tokens: int, logit_rows: int, what: str, hint: str) -> None:
    """Refuse, with the estimate, a forward pass that would not fit in this machine's memory."""
    from ..training.config import memory_bytes

    need, total = forward_bytes(config, tokens, logit_rows), memory_bytes()
    if total and need > total:
        raise ValueError(
            f"{what} ({tokens:,} tokens) needs ~{need / 2**30:,.1f} GiB of activations for this model; "
            f"the machine has {total / 2**30:,.1f} GiB: {hint}"
        )
