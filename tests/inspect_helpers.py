"""Shared by the inspect tests: a tiny language checkpoint with its tokenizer, a tiny three-moons
run folder, and the data embedded in a generated page."""

import json
import re

import torch

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.data.tokenizers import train_bpe
from memory_mosaics.models.moons import moons_memory

STORY = (
    "Once upon a time, there was a girl named Lily. Lily had a red ball. "
    "One day, Lily went to the park with her dog, Max. Max saw the ball and ran. Lily laughed."
)


def tiny_checkpoint(directory, **config):
    """A randomly initialised Mosaic (2 layers, 2 heads, d 16; ``config`` overrides) and a 300-id BPE
    tokenizer saved in ``directory``."""
    tok = train_bpe([STORY] * 4 + ["The cat sat on the mat. The dog ran in the sun."] * 4, 300)
    torch.manual_seed(0)
    sizes = dict(n_layer=2, n_head=2, n_embd=16, pmem_size=24)
    model = MosaicLM(MosaicConfig(vocab_size=tok.vocab_size, **{**sizes, **config}))
    model.save_pretrained(directory)
    tok.save(directory)
    return directory


def tiny_moons_run(directory):
    """A ``metrics.json`` as ``mosaics reproduce moons`` writes it: one seed, both models (untrained)."""
    directory.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, heads in (("1head", 1), ("3heads", 3)):
        weights = {k: v.tolist() for k, v in moons_memory(heads).state_dict().items()}
        models[name] = {"weights": weights, "summary": {"validation": {"between_periods": 0.5}}}
    metrics = {"settings": {"observer": "sun", "tie_break": "stable"}, "runs": [{"seed": 7, "models": models}]}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def page_data(html: str) -> dict:
    """The JSON embedded in a page."""
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))
