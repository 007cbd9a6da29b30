"""One registry of model kinds: training, loading and the CLI resolve kinds through it."""

from dataclasses import dataclass

import pytest
from helpers import tiny_train_config

from memory_mosaics.models import MosaicConfig, MosaicLM, load_pretrained, lookup, model_kinds
from memory_mosaics.models.registry import REGISTRY
from memory_mosaics.training.config import TrainConfig
from memory_mosaics.training.trainer import Trainer


@dataclass
class EchoConfig(MosaicConfig):
    model_type = "echo-test"


class EchoLM(MosaicLM):
    config_class = EchoConfig


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(REGISTRY, "echo-test", (EchoConfig, EchoLM))


def test_builtin_kinds():
    assert model_kinds() == ("mosaic", "gpt")
    with pytest.raises(ValueError, match="unknown model kind 'nope'; expected one of mosaic, gpt"):
        TrainConfig(train="x", model="nope")


def test_a_registered_kind_is_configured_trained_and_loaded(echo, tmp_path, monkeypatch):
    cfg = TrainConfig(train="x", model="echo-test", n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    config = cfg.model_config(100)
    assert type(config) is EchoConfig and config.vocab_size == 128  # padded to vocab_multiple 64
    assert (config.attn_dropout, config.pmem_attn_dropout) == (0.0, 0.1)  # the Mosaic's training_fields
    lookup("echo-test")[1](config).save_pretrained(tmp_path / "saved")
    assert type(load_pretrained(tmp_path / "saved")) is EchoLM

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"the cat {i} sat on the mat" for i in range(200)))
    monkeypatch.setenv("MOSAICS_CACHE_DIR", str(tmp_path / "cache"))
    run = tiny_train_config(corpus, valid="", model="echo-test", max_steps=1, checkpoint_interval=0)
    trainer = Trainer(run, tmp_path / "run")
    assert type(trainer.model) is EchoLM
    trainer.fit()
    assert type(load_pretrained(tmp_path / "run" / "last")) is EchoLM
