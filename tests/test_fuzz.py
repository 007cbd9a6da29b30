"""Property-based fuzzing (issue 9, item 7): the config parser, the corpus readers and the RegBench
JSONL reader, fed random bytes, random JSON and random near-valid records, raise nothing but their
documented error type, ``ValueError`` with a message, or succeed with a valid result."""

from __future__ import annotations

import json
import math
import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memory_mosaics.data import regbench as rb  # noqa: E402
from memory_mosaics.data.corpus import read_documents  # noqa: E402
from memory_mosaics.training.config import TrainConfig, parse_assignment, read_config_file  # noqa: E402

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
CONFIG_KEYS = sorted(TrainConfig.__dataclass_fields__)


def expect_value_error(call):
    """Run ``call``; only a ``ValueError`` with a message may escape (the CLI prints it on one line)."""
    try:
        return call()
    except ValueError as err:
        assert str(err).strip(), repr(err)
        return None


# ---------------------------------------------------------------------- the config parser
@FUZZ
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=12), json_values, max_size=6))
def test_config_from_random_tables(table):
    config = expect_value_error(lambda: TrainConfig.from_dict(table))
    if config is not None:  # accepted: every number in it is finite, so a run never starts on NaN
        numbers = [v for v in config.to_dict().values() if isinstance(v, float)] + list(config.betas)
        assert all(math.isfinite(v) for v in numbers)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".json", ".toml"]))
def test_config_files_of_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_bytes(data)
    table = expect_value_error(lambda: read_config_file(path))
    assert table is None or isinstance(table, dict)


@FUZZ
@given(st.text(max_size=40) | st.builds(lambda v: "lr=" + json.dumps(v), json_values) | st.just("x=" + "[" * 5000))
def test_assignments_of_random_text(text):
    pair = expect_value_error(lambda: parse_assignment(text))
    if pair is not None:
        assert pair[0] and pair[0] == pair[0].strip()


# ---------------------------------------------------------------------- the corpus readers
@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".txt", ".jsonl"]), st.sampled_from(["eot", "blank"]))
def test_corpora_of_random_bytes(tmp_path_factory, data, suffix, separator):
    path = tmp_path_factory.mktemp("corpus") / f"c{suffix}"
    path.write_bytes(data)
    docs = expect_value_error(lambda: read_documents(path, separator))
    if docs is not None:
        assert docs and all(isinstance(d, str) and d and d == d.strip() and "\x00" not in d for d in docs)


@FUZZ
@given(st.lists(json_values | st.builds(lambda t: {"text": t}, st.text(max_size=30)), max_size=6))
def test_jsonl_corpora_of_random_records(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("corpus") / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    docs = expect_value_error(lambda: read_documents(path))
    if docs is not None:
        assert all(isinstance(d, str) and d.strip() for d in docs)


# ---------------------------------------------------------------------- the RegBench JSONL reader
def _valid_records():
    splits = rb.make_splits(2, seed=3, num_test=2, num_val=1)
    return [env.to_json() for envs in splits.values() for env in envs]


VALID = _valid_records()


def _mutate(record: dict, path: list, value) -> dict:
    """``record`` with the entry at ``path`` (keys or indices, clipped to what exists) set to ``value``."""
    record = json.loads(json.dumps(record))
    node = record
    for i, key in enumerate(path):
        if isinstance(node, dict) and node:
            key = sorted(node)[key % len(node)]
        elif isinstance(node, list) and node:
            key = key % len(node)
        else:
            return record
        if i == len(path) - 1 or not isinstance(node[key], (dict, list)):
            node[key] = value
            return record
        node = node[key]
    return record


near_valid = st.builds(
    _mutate,
    st.sampled_from(VALID),
    st.lists(st.integers(0, 50), min_size=1, max_size=4),
    json_values | st.integers(-25, 25),
)


@FUZZ
@given(st.lists(near_valid | st.sampled_from(VALID) | json_values, min_size=1, max_size=5))
def test_regbench_reader_on_random_records(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("rb") / "e.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    splits = expect_value_error(lambda: rb.read_jsonl(path))
    if splits is not None:  # accepted: every record is one the generator could have written
        for envs in splits.values():
            for env in envs:
                t = env.automaton.transitions
                assert ((t == -1) | ((t >= 0) & (t < env.automaton.num_states))).all()
                assert (t[:, [0, rb.SEP]] == -1).all()
                assert all(1 <= tok <= rb.SEP for tok in env.tokens)
                rb.inputs_and_labels(env.tokens)


@FUZZ
@given(st.binary(max_size=400) | st.text(alphabet=string.printable, max_size=400).map(str.encode))
def test_regbench_reader_on_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rb") / "e.jsonl"
    path.write_bytes(data)
    expect_value_error(lambda: rb.read_jsonl(path))
