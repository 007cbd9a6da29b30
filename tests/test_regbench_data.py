"""Tests of the RegBench generator (memory_mosaics.data.regbench)."""

from collections import deque

import numpy as np
import pytest
import torch

from memory_mosaics.data import regbench
from memory_mosaics.data.regbench import (
    IGNORE_INDEX,
    PAD,
    SEP,
    VOCAB_SIZE,
    Automaton,
    collate,
    decode,
    encode,
    inputs_and_labels,
    make_splits,
    minimise,
    random_automaton,
    read_jsonl,
    sample_prompt,
    sample_raw_automaton,
    write_jsonl,
)


@pytest.fixture(scope="module")
def test_envs():
    """The first 500 test environments of seed 0 (validation skipped for speed)."""
    return make_splits(0, seed=0, num_test=500, num_val=0)["test"]


def _automaton(edges, num_states, start=0):
    """Automaton from [state, letter, target] triples."""
    return Automaton.from_json({"num_states": num_states, "start": start, "transitions": edges})


def _reachable(automaton):
    """Set of states reachable from the start."""
    seen, queue = {automaton.start}, deque([automaton.start])
    while queue:
        state = queue.popleft()
        for letter in automaton.valid_next(state):
            target = automaton.step(state, letter)
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def _distinguishable(automaton, p, q):
    """Whether some string is a walk from p but not from q or vice versa (product-automaton BFS)."""
    seen, queue = {(p, q)}, deque([(p, q)])
    while queue:
        a, b = queue.popleft()
        if not np.array_equal(automaton.valid_next(a), automaton.valid_next(b)):
            return True
        for letter in automaton.valid_next(a):
            pair = (automaton.step(a, letter), automaton.step(b, letter))
            if pair not in seen:
                seen.add(pair)
                queue.append(pair)
    return False


def _strings(tokens):
    """Split a prompt at SEP into lists of letter ids."""
    strings, current = [], []
    for token in tokens:
        if token == SEP:
            strings.append(current)
            current = []
        else:
            current.append(token)
    return strings + [current]


def test_vocabulary_and_codec():
    assert VOCAB_SIZE == 20 and PAD == 0 and SEP == 19 and IGNORE_INDEX == -100
    assert encode(".abr|") == [0, 1, 2, 18, 19]
    text = "abc|rq|a"
    assert decode(encode(text)) == text


def test_raw_automaton_constraints():
    rng = np.random.default_rng(1)
    for _ in range(300):
        automaton = sample_raw_automaton(rng)
        table = automaton.transitions
        assert 4 <= automaton.num_states <= 12 and automaton.start == 0
        assert (table[:, [PAD, SEP]] < 0).all()
        for state in range(automaton.num_states):
            letters = automaton.valid_next(state)
            targets = table[state, letters]
            assert 1 <= len(letters) <= 3
            assert state not in targets
            assert len(set(targets.tolist())) == len(targets)


def test_minimal_automaton_constraints(test_envs):
    for env in test_envs[:200]:
        automaton = env.automaton
        degrees = (automaton.transitions >= 0).sum(axis=1)
        assert ((degrees >= 1) & (degrees <= 3)).all()
        assert _reachable(automaton) == set(range(automaton.num_states))
        for p in range(automaton.num_states):
            for q in range(p + 1, automaton.num_states):
                assert _distinguishable(automaton, p, q)


def test_minimise_merges_equivalent_states_and_trims():
    # 0 -a-> 1 -b-> 2 -a-> 1 : states 0 and 2 are equivalent; state 3 is unreachable.
    automaton = _automaton([[0, 1, 1], [1, 2, 2], [2, 1, 1], [3, 1, 0]], num_states=4)
    small = minimise(automaton)
    assert small.num_states == 2
    assert small.to_json()["transitions"] == [[0, 1, 1], [1, 2, 0]]


def test_minimise_preserves_language():
    rng = np.random.default_rng(2)
    for _ in range(50):
        raw = sample_raw_automaton(rng)
        small = minimise(raw)
        for _ in range(5):
            assert small.accepts(regbench.sample_walk(raw, 30, rng))
            assert raw.accepts(regbench.sample_walk(small, 30, rng))


def test_canonical_key_ignores_state_numbering():
    rng = np.random.default_rng(3)
    for _ in range(30):
        raw = sample_raw_automaton(rng)
        perm = rng.permutation(raw.num_states)  # old state s becomes perm[s]
        table = np.full_like(raw.transitions, -1)
        defined = raw.transitions >= 0
        table[perm] = np.where(defined, perm[raw.transitions], -1)
        shuffled = Automaton(table, int(perm[raw.start]))
        assert shuffled.canonical_key() == raw.canonical_key()


def test_automaton_json_round_trip():
    automaton = random_automaton(np.random.default_rng(4))
    again = Automaton.from_json(automaton.to_json())
    assert np.array_equal(again.transitions, automaton.transitions)
    assert again.start == automaton.start
    assert all(len(edge) == 3 for edge in automaton.to_json()["transitions"])


def test_prompt_format(test_envs):
    for env in test_envs:
        tokens = env.tokens
        assert tokens[0] != SEP and tokens[-1] != SEP
        assert all(1 <= t <= SEP for t in tokens)
        strings = _strings(tokens)
        assert 10 <= len(strings) <= 19
        assert all(1 <= len(s) <= 49 for s in strings)
        assert all(env.automaton.accepts(s) for s in strings)


def test_generator_statistics_near_reference(test_envs):
    lengths = np.array([len(env.tokens) for env in test_envs])
    states = np.array([env.automaton.num_states for env in test_envs])
    letters = [len(np.unique(np.nonzero(env.automaton.transitions >= 0)[1])) for env in test_envs]
    degrees = np.concatenate([(env.automaton.transitions >= 0).sum(axis=1) for env in test_envs])
    shares = np.bincount(degrees, minlength=4)[1:] / len(degrees)
    assert abs(lengths.mean() - 376) < 15
    assert lengths.min() >= 10 * 1 + 9 and lengths.max() <= 19 * 49 + 18
    assert abs(states.mean() - 7.0) < 0.5
    assert abs(np.mean(letters) - 7.5) < 0.5
    assert np.all(np.abs(shares - 1 / 3) < 0.05)


def test_splits_deterministic_and_test_set_fixed():
    first = make_splits(20, seed=5, num_test=30, num_val=20)
    again = make_splits(20, seed=5, num_test=30, num_val=20)
    bigger = make_splits(60, seed=5, num_test=30, num_val=20)
    other_seed = make_splits(20, seed=6, num_test=30, num_val=20)
    for split in ("test", "validation", "train"):
        assert [e.tokens for e in first[split]] == [e.tokens for e in again[split]]
        assert [e.split for e in first[split]] == [split] * len(first[split])
    for split in ("test", "validation"):
        assert [e.tokens for e in first[split]] == [e.tokens for e in bigger[split]]
    assert [e.tokens for e in first["train"]] == [e.tokens for e in bigger["train"][:20]]
    assert [e.tokens for e in first["test"]] != [e.tokens for e in other_seed["test"]]
    assert [len(first[s]) for s in ("test", "validation", "train")] == [30, 20, 20]


def test_no_duplicate_automata_across_splits():
    splits = make_splits(300, seed=0, num_test=150, num_val=150)
    keys = [env.automaton.canonical_key() for envs in splits.values() for env in envs]
    assert len(keys) == len(set(keys)) == 600


def test_deduplication_redraws_repeated_automata(monkeypatch):
    pool = [
        _automaton([[0, 1, 0]], 1),
        _automaton([[0, 2, 0]], 1),
        _automaton([[0, 1, 1], [1, 2, 0]], 2),
        _automaton([[0, 1, 1], [0, 2, 1], [1, 3, 0]], 2),
    ]
    monkeypatch.setattr(regbench, "random_automaton", lambda rng: pool[rng.integers(len(pool))])
    splits = make_splits(2, seed=0, num_test=1, num_val=1)
    keys = {env.automaton.canonical_key() for envs in splits.values() for env in envs}
    assert len(keys) == 4
    with pytest.raises(RuntimeError):
        make_splits(1, seed=0, num_test=4, num_val=0)


def test_sample_prompt_uses_only_valid_walks():
    automaton = _automaton([[0, 1, 1], [1, 2, 0], [1, 3, 0]], 2)
    tokens = sample_prompt(automaton, np.random.default_rng(7))
    for string in _strings(tokens):
        assert string[0] == 1
        assert all(b == 1 for b in string[2::2]) and all(b in (2, 3) for b in string[1::2])


def test_inputs_and_labels_ignore_separator():
    tokens = encode("ab|ca|b")
    inputs, labels = inputs_and_labels(tokens)
    assert inputs.tolist() == encode("ab|ca|")
    assert labels.tolist() == [2, IGNORE_INDEX, 3, 1, IGNORE_INDEX, 2]


def test_collate_pads_per_batch():
    batch = [inputs_and_labels(encode("ab|a")), inputs_and_labels(encode("abcab"))]
    inputs, labels = collate(batch)
    assert inputs.dtype == labels.dtype == torch.long
    assert inputs.shape == labels.shape == (2, 4)
    assert inputs[0].tolist() == encode("ab|") + [PAD]
    assert labels[0].tolist() == [2, IGNORE_INDEX, 1, IGNORE_INDEX]
    assert labels[1].tolist() == encode("bcab")


def test_jsonl_round_trip(tmp_path):
    splits = make_splits(3, seed=1, num_test=2, num_val=2)
    path = tmp_path / "regbench.jsonl"
    write_jsonl(path, splits)
    lines = path.read_text().splitlines()
    assert len(lines) == 7 and '"split": "test"' in lines[0]
    loaded = read_jsonl(path)
    for split, envs in splits.items():
        assert [e.tokens for e in loaded[split]] == [e.tokens for e in envs]
        assert [e.automaton.canonical_key() for e in loaded[split]] == [e.automaton.canonical_key() for e in envs]
