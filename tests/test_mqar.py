"""Tests of the MQAR generator (Zoology's procedure) and of ``mosaics reproduce mqar``."""

import json

import pytest
import torch
import torch.nn.functional as F

from memory_mosaics.cli import main
from memory_mosaics.data.mqar import (
    IGNORE_INDEX,
    MQARSetting,
    gap_probabilities,
    make_mqar,
    make_test_set,
    make_train_set,
)
from memory_mosaics.experiments.mqar.presets import model_spec, single_setting
from memory_mosaics.experiments.mqar.train import accuracy, batch_order, build_model, query_loss, train_one


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_examples_follow_the_definition(random_non_queries):
    s = MQARSetting(64, 8, vocab_size=128, random_non_queries=random_non_queries)
    data = make_mqar(s, 200, seed=1)
    P, V = s.num_pairs, s.vocab_size
    assert data.inputs.shape == data.labels.shape == (200, 64)
    for x, y in zip(data.inputs.tolist(), data.labels.tolist()):
        keys, values = x[0 : 2 * P : 2], x[1 : 2 * P : 2]
        assert len(set(keys)) == P and all(1 <= k < V // 2 for k in keys)  # distinct, key vocabulary
        assert len(set(values)) == P and all(V // 2 <= v < V for v in values)  # distinct, value vocabulary
        queried = [t for t in range(64) if y[t] != IGNORE_INDEX]
        assert len(queried) == P and all(t >= 2 * P and (t - 2 * P) % 2 == 0 for t in queried)
        pairs = dict(zip(keys, values))
        assert sorted(x[t] for t in queried) == sorted(keys)  # every key queried once
        assert all(y[t] == pairs[x[t]] for t in queried)  # the label is the queried key's value
        others = [x[t] for t in range(2 * P, 64) if y[t] == IGNORE_INDEX]
        if not random_non_queries:
            assert set(others) == {0}
    if random_non_queries:  # the filler is uniform over the whole vocabulary
        filler = data.inputs[:, 2 * P :][data.labels[:, 2 * P :] == IGNORE_INDEX]
        assert filler.min() >= 0 and filler.max() < V and len(filler.unique()) > 0.9 * V


def test_gap_distribution_is_the_power_law():
    s = MQARSetting(64, 1, vocab_size=128, power_a=0.3)
    p = gap_probabilities(s.num_slots, s.power_a)
    g = torch.arange(1, s.num_slots + 1, dtype=torch.float64)
    assert torch.allclose(p, g ** (0.3 - 1) / (g ** (0.3 - 1)).sum())  # p(g) ∝ a g^(a-1), literally
    data = make_mqar(s, 20000, seed=2)
    slot = ((data.labels != IGNORE_INDEX).float().argmax(1) - 2) // 2  # one query per row: its slot g - 1
    freq = torch.bincount(slot, minlength=s.num_slots).double() / len(slot)
    assert (freq - p).abs().max() < 0.015
    uniform = gap_probabilities(10, 1.0)
    assert torch.allclose(uniform, torch.full((10,), 0.1, dtype=torch.float64))


def test_fixed_test_sets_and_separate_training_sets():
    s = MQARSetting(32, 4, vocab_size=64)
    a, b = make_test_set(s, 50), make_test_set(s, 50)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    train = make_train_set(s, 50, data_seed=0)
    assert not torch.equal(train.inputs, a.inputs)
    assert not torch.equal(make_train_set(s, 50, data_seed=1).inputs, train.inputs)
    other = make_test_set(MQARSetting(32, 4, vocab_size=64, power_a=0.5), 50)
    assert not torch.equal(other.inputs, a.inputs)  # each setting has its own seed


@pytest.mark.parametrize(
    "kwargs",
    [dict(seq_len=63, num_pairs=4), dict(seq_len=64, num_pairs=17), dict(seq_len=64, num_pairs=4, vocab_size=64)],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        MQARSetting(**kwargs)


@pytest.mark.parametrize("name", ["mosaic", "mosaic_v2", "gpt"])
def test_query_loss_and_accuracy_match_the_full_forward(name):
    data = make_mqar(MQARSetting(32, 4, vocab_size=64), 8, seed=3)
    model = build_model(model_spec(name, 16), 64, 32).eval()
    logits = model(data.inputs)
    full = F.cross_entropy(logits.flatten(0, 1), data.labels.flatten(), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(query_loss(model, data.inputs, data.labels), full)
    mask = data.labels != IGNORE_INDEX
    expected = (logits.argmax(-1)[mask] == data.labels[mask]).double().mean().item()
    assert accuracy(model, data) == pytest.approx(expected)


def test_equal_block_weights():
    """GPT-2 and the v1 Mosaic: 12 d^2 per block (the Mosaic adds 7 scalars per head)."""
    d = 64
    counts = {}
    for name in ("mosaic", "gpt"):
        model = build_model(model_spec(name, d), 1024, 256)
        counts[name] = sum(p.numel() for p in model.blocks.parameters() if p.dim() >= 2)
    assert counts["mosaic"] == counts["gpt"] == 2 * 12 * d * d


def test_batches_never_mix_settings_and_cover_every_example():
    order = batch_order([70, 33], 32, torch.Generator().manual_seed(0))
    assert sorted(order) == [(0, 0), (0, 32), (0, 64), (1, 0), (1, 32)]
    assert order != sorted(order) or len(order) < 3  # shuffled


def test_mosaic_learns_recall_quickly():
    """64 steps on one small setting: the v1 Mosaic recalls far above chance (1 / 32 values; 0.93 seen)."""
    spec = single_setting(32, 4, num_train=512, num_test=64, lr=3e-3, vocab_size=64, batch_size=16, warmup=5, epochs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: more threads only contend on a shared machine
    try:
        record = train_one(model_spec("mosaic", 32), spec, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert record["steps"] == 64 and record["accuracy"] > 0.5, record["by_setting"]


def test_reproduce_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "mqar"
    assert main(["reproduce", "mqar", "--quick", "--out", str(out), "--threads", "1", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in results["runs"]} == {"mosaic", "mosaic_v2", "gpt"}
    for run in results["runs"]:
        assert set(run["by_setting"]) == {"L16-kv2", "L32-kv8"}
        assert all(0.0 <= a <= 1.0 for a in run["by_setting"].values())
    assert set(results["summary"]) == {"mosaic", "mosaic_v2", "gpt"}
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| model | d |") and len(table) == 2 + 3  # header, rule, one row per model
    assert (out / "mqar.png").is_file() or "matplotlib is not installed" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["reproduce", "mqar", "--quick", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out.count("reused from") == 3


@pytest.mark.parametrize(
    "flags", [["--widths", "24"], ["--lr", "mosaic=abc"], ["--lr", "bert=1e-3"], ["--epochs", "0"]]
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags):
    code = main(["reproduce", "mqar", "--quick", "--out", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mosaics: error:")


def test_summary_over_seeds():
    from memory_mosaics.experiments.mqar.results import summarise

    run = {"model": "mosaic", "width": 64, "params": 10}
    runs = [
        {**run, "seed": 0, "by_setting": {"L64-kv16": 0.5}},
        {**run, "seed": 1, "by_setting": {"L64-kv16": 0.9}},
        {**run, "seed": 2, "diverged": "loss is nan at step 3"},
    ]
    cell = summarise(runs)["mosaic"]["64"]["L64-kv16"]
    assert cell["seeds"] == [0, 1] and cell["mean"] == pytest.approx(0.7)
    assert cell["std"] == pytest.approx(0.4 / 2**0.5) and (cell["min"], cell["max"]) == (0.5, 0.9)
