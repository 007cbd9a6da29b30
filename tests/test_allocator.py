"""training/allocator.py: with keep_freed_memory(), a freed block is reused without page faults;
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
def faults():  # minor page faults of allocating, touching and freeing 64 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(min(faults() for _ in range(3)))
"""


def _faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    """64 MiB is above glibc's largest default mmap threshold: by default it is unmapped at free
    and faulted in again (16384 pages of 4 KiB, fewer with huge pages); kept, it is reused."""
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
