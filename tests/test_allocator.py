"""training/allocator.py: with keep_freed_memory(), freed blocks are reused without page faults;
the trainer sets it when training on the CPU (and only when asked)."""

import subprocess
import sys

import pytest
from helpers import tiny_train_config

from memory_mosaics.training import allocator
from memory_mosaics.training.trainer import Trainer

FAULTS = """
import resource, sys, torch
from memory_mosaics.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # minor page faults of a step's activations: 184 MiB in five blocks, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(mib * 2**18) for mib in (64, 16, 32, 8, 64)]
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print([step() for _ in range(6)][-1])  # the sixth step: the allocator's steady state
"""


def _faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    """Steady state of repeated steps: by default the blocks above glibc's mmap threshold are
    unmapped at free and faulted in again every step (some 41 thousand pages of 4 KiB here, fewer
    with huge pages); kept, they are reused without a fault."""
    kept, default = _faults("keep"), _faults("default")
    assert kept < 100
    assert default > kept


def test_trainer_keeps_cpu_memory_only_when_asked(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"story {i}: a small corpus of words for a tokenizer." for i in range(200)))
    for keep, expected in ((False, []), (True, [1])):
        cfg = tiny_train_config(corpus, cache_dir=str(tmp_path / "cache"), device="cpu", keep_cpu_memory=keep)
        trainer = Trainer(cfg, tmp_path / f"run-{keep}", log=lambda msg: None)
        trainer.close()
        assert calls == expected
