"""The counter-based dropout mask (ops/dropout_mask.py): values, drop rate, independence,
reproducibility, and its use under torch.compile."""

import math

import pytest
import torch

from memory_mosaics.ops import dropout_mask as dm

pytestmark = pytest.mark.skipif(not dm.available(), reason="dropout-mask kernel not built (no C compiler)")


@pytest.mark.parametrize("dtype", dm.DTYPES)
def test_values_are_zero_or_the_inverted_scale(dtype):
    mask = dm.dropout_mask((3, 1001), 0.25, dtype)  # odd sizes: the last element of a pair-less tail
    assert mask.dtype == dtype and mask.shape == (3, 1001)
    scale = torch.tensor(1 / 0.75, dtype=dtype)
    assert set(mask.unique().tolist()) == {0.0, scale.item()}


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_drop_rate_within_binomial_error(p):
    n = 1_000_003
    dropped = (dm.dropout_mask((n,), p) == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_p_zero_keeps_everything():
    assert torch.equal(dm.dropout_mask((7, 9), 0.0), torch.ones(7, 9))


def test_neighbours_and_blocks_are_independent():
    """Elements 2j and 2j+1 share one 64-bit draw, blocks of 4096 go to different threads: the
    indicator of a drop is uncorrelated with its neighbour's and with the one a block further."""
    p, n = 0.3, 2_000_000
    d = (dm.dropout_mask((n,), p) == 0).double()
    for lag in (1, 2, 4096):
        a, b = d[:-lag] - p, d[lag:] - p
        corr = (a * b).mean() / (p * (1 - p))
        assert abs(corr) < 5 / math.sqrt(n), lag


def test_seeded_by_torch_generator():
    torch.manual_seed(5)
    a, b = dm.dropout_mask((64, 64), 0.5), dm.dropout_mask((64, 64), 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, dm.dropout_mask((64, 64), 0.5))  # the same seed, the same mask
    assert not torch.equal(a, b)  # the next call draws a new seed


def test_threads_do_not_change_the_mask():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        one = dm.dropout_mask((5, 20_000), 0.1)
        torch.set_num_threads(2)
        torch.manual_seed(0)
        two = dm.dropout_mask((5, 20_000), 0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_rejects_bad_probability():
    with pytest.raises(ValueError, match="dropout probability"):
        dm.dropout_mask((2,), 1.0)


def test_traced_by_torch_compile_without_graph_break():
    fn = torch.compile(lambda w: w * dm.dropout_mask(w.shape, 0.5, w.dtype), fullgraph=True, backend="eager")
    w = torch.ones(4, 8)
    out = fn(w)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
