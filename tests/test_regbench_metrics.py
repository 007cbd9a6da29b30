"""Tests of RegBench metrics and training-free baselines (memory_mosaics.eval.regbench)."""

import numpy as np
import pytest

from memory_mosaics.data.regbench import (
    SEP,
    Automaton,
    Environment,
    collate,
    encode,
    inputs_and_labels,
    make_splits,
)
from memory_mosaics.eval.regbench import (
    accuracy_and_tvd,
    baselines,
    evaluate_predictor,
    ngram_distributions,
    ngram_predictor,
    oracle_predictor,
    pooled_accuracy_and_tvd,
    state_sequence,
    true_distributions_batch,
    true_next_distributions,
)

A, B, C = encode("abc")
REFERENCE = {  # (accuracy, TVD) of the in-context n-grams, docs/regbench.md, "Baselines"
    "1-gram": (0.46, 0.64),
    "2-gram": (0.83, 0.29),
    "3-gram": (0.93, 0.21),
    "4-gram": (0.95, 0.24),
}


@pytest.fixture
def toy():
    """0 -a-> 1, 1 -b-> 0, 1 -c-> 0."""
    return Automaton.from_json({"num_states": 2, "start": 0, "transitions": [[0, A, 1], [1, B, 0], [1, C, 0]]})


def _one_hot(letter):
    row = np.zeros(20)
    row[letter] = 1.0
    return row


def test_true_next_distributions_by_hand(toy):
    tokens = encode("ab|ac|a")
    true = true_next_distributions(toy, tokens)
    after_a = (_one_hot(B) + _one_hot(C)) / 2
    expected = np.stack([after_a, _one_hot(A), _one_hot(A), after_a, _one_hot(A), _one_hot(A)])
    assert true.shape == (6, 20)
    np.testing.assert_allclose(true, expected)
    assert state_sequence(toy, tokens).tolist() == [1, 0, 0, 1, 0, 0, 1]


def test_state_sequence_rejects_invalid_walk(toy):
    with pytest.raises(ValueError):
        state_sequence(toy, encode("ab|b"))


def test_true_distributions_batch_aligns_with_collate(toy):
    prompts = [encode("ab|a"), encode("acaba")]
    inputs, _ = collate([inputs_and_labels(p) for p in prompts])
    true, mask = true_distributions_batch([toy, toy], prompts)
    assert true.shape == (2, 4, 20) and mask.tolist() == [[True] * 3 + [False], [True] * 4]
    assert (mask == (inputs.numpy() != 0)).all()
    np.testing.assert_allclose(true[0, :3], true_next_distributions(toy, prompts[0]))
    assert not true[0, 3].any()


def test_accuracy_and_tvd_by_hand():
    true = np.zeros((3, 20))
    true[0, [A, B]] = 0.5
    true[1, A] = 1.0
    true[2, C] = 1.0
    pred = np.zeros((3, 20))
    pred[0, [A, C]] = [0.6, 0.4]  # argmax a: valid; |P - Q| = 0.1 + 0.5 + 0.4
    pred[1, [B, SEP]] = [0.7, 0.3]  # argmax b: invalid; |P - Q| = 1 + 0.7 + 0.3
    pred[2, C] = 1.0  # exact
    result = accuracy_and_tvd(pred, true)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["l1"] == pytest.approx((1.0 + 2.0 + 0.0) / 3)
    assert result["tvd"] == pytest.approx(0.5)
    assert result["positions"] == 3
    masked = accuracy_and_tvd(pred, true, np.array([True, False, True]))
    assert masked["accuracy"] == 1.0 and masked["tvd"] == pytest.approx(0.25)


def test_pooling_weights_positions_not_sequences():
    true = np.zeros((4, 20))
    true[:, A] = 1.0
    good, bad = true.copy(), np.zeros((4, 20))
    bad[:, B] = 1.0
    pooled = pooled_accuracy_and_tvd([good[:1], bad[:3]], [true[:1], true[:3]])
    assert pooled["accuracy"] == pytest.approx(1 / 4)
    assert pooled["tvd"] == pytest.approx(3 / 4)


def test_oracle_is_perfect():
    envs = make_splits(0, seed=2, num_test=40, num_val=0)["test"]
    result = evaluate_predictor(envs, oracle_predictor)
    assert result["accuracy"] == 1.0 and result["tvd"] == 0.0
    assert result["positions"] == sum(len(env.tokens) - 1 for env in envs)


def test_ngram_by_hand():
    #              inputs: a  b  |  a  b  |   (target of the last: a)
    probs = ngram_distributions(encode("ab|ab|a"), max_order=3)
    assert probs.shape == (3, 6, 20)
    half = (_one_hot(A) + _one_hot(B)) / 2
    # 1-gram: frequency of the letters seen so far.
    two_a = (2 * _one_hot(A) + _one_hot(B)) / 3
    np.testing.assert_allclose(probs[0], [_one_hot(A), half, half, two_a, half, half])
    # 2-gram: 'a' first unseen -> unigram; 'b' only ever followed by '|' -> unigram;
    # at '|' the string-start context has been followed by 'a'.
    expected = [_one_hot(A), half, _one_hot(A), _one_hot(B), half, _one_hot(A)]
    np.testing.assert_allclose(probs[1], expected)
    # 3-gram: context (start, a) was followed by b; (a, b) only by '|' -> same as the 2-gram.
    np.testing.assert_allclose(probs[2], expected)


def test_ngram_counts_follow_frequencies():
    probs = ngram_distributions(encode("ab|ab|ac|ab"), max_order=2)[1]
    expected = np.zeros(20)
    expected[[B, C]] = [2 / 3, 1 / 3]
    np.testing.assert_allclose(probs[8], _one_hot(A))  # at '|': every string so far starts with a
    np.testing.assert_allclose(probs[9], expected)  # after the fourth 'a': b, b, c seen before


def test_ngram_is_causal_and_normalised():
    envs = make_splits(0, seed=3, num_test=5, num_val=0)["test"]
    for env in envs:
        probs = ngram_distributions(env.tokens)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
        assert not probs[..., [0, SEP]].any()
        cut = len(env.tokens) // 2
        prefix = ngram_distributions(env.tokens[: cut + 1])
        np.testing.assert_allclose(prefix, probs[:, :cut])


def test_ngram_predictor_matches_distributions():
    env = make_splits(0, seed=4, num_test=1, num_val=0)["test"][0]
    assert isinstance(env, Environment)
    np.testing.assert_allclose(ngram_predictor(3)(env), ngram_distributions(env.tokens, 3)[2])


def test_baselines_near_reference():
    report = baselines(make_splits(0, seed=0, num_test=300, num_val=0)["test"])
    for name, (accuracy, tvd) in REFERENCE.items():
        assert report[name]["accuracy"] == pytest.approx(accuracy, abs=0.06), name
        assert report[name]["tvd"] == pytest.approx(tvd, abs=0.06), name
    assert report["oracle"]["accuracy"] == 1.0 and report["oracle"]["tvd"] == 0.0
    accuracies = [report[f"{n}-gram"]["accuracy"] for n in range(1, 5)]
    assert accuracies == sorted(accuracies)


def test_baselines_pool_the_predictors():
    envs = make_splits(0, seed=5, num_test=20, num_val=0)["test"]
    report = baselines(envs, max_order=3)
    assert list(report) == ["1-gram", "2-gram", "3-gram", "oracle"]
    for n in (1, 2, 3):
        assert report[f"{n}-gram"] == evaluate_predictor(envs, ngram_predictor(n))
    assert report["oracle"] == evaluate_predictor(envs, oracle_predictor)
