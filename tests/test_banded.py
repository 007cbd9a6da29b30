"""The O(T w) windowed retrieval equals the literal formula, in values and gradients."""

import pytest
import torch

from memory_mosaics.ops.banded import banded_retrieval, block_size
from memory_mosaics.ops.retrieval import causal_retrieval_reference


@pytest.mark.parametrize(
    "T, min_lag, max_lag, block",
    [
        (5, 1, 3, None),  # shorter than one block
        (100, 1, 7, None),
        (130, 1, 63, None),  # window = block
        (200, 3, 20, 18),  # the smallest block that holds the window
        (64, 1, 1, None),  # a window of one pair
        (300, 2, 130, None),  # a window larger than the default minimum block
        (3, 3, 5, None),  # no query sees a pair
    ],
)
def test_banded_equals_reference_values_and_gradients(T, min_lag, max_lag, block):
    torch.manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 5, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = banded_retrieval(q, k, v, min_lag, max_lag, block=block)
    ref = causal_retrieval_reference(q, k, v, min_lag, max_lag)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    if T > min_lag:
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_banded_output_at_t_ignores_pairs_outside_the_window():
    q, k, v = (torch.randn(1, 2, 400, 4) for _ in range(3))
    out = banded_retrieval(q, k, v, 1, 10)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :289] += 5.0  # pairs more than 10 steps before t = 300
    v2[:, :, 300:] -= 5.0  # pairs at or after t = 300
    torch.testing.assert_close(banded_retrieval(q, k2, v2, 1, 10)[:, :, 300], out[:, :, 300])


def test_block_must_hold_the_window():
    q = torch.randn(1, 1, 50, 4)
    with pytest.raises(ValueError, match="window"):
        banded_retrieval(q, q, q, 1, 20, block=19)
    assert block_size(1) == 64 and block_size(65) == 80 and block_size(256) == 256


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_retrieval_takes_the_banded_path_on_long_windows_and_agrees(dtype, monkeypatch):
    from memory_mosaics.ops import banded, retrieval

    calls = []
    monkeypatch.setattr(banded, "banded_retrieval", lambda *a, **k: calls.append(1) or banded_retrieval(*a, **k))
    q, k, v = (torch.randn(1, 2, 600, 16, dtype=dtype) for _ in range(3))  # head size 16: the SDPA path
    out = retrieval.causal_retrieval(q, k, v, 1, 10)
    assert calls == [1]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, causal_retrieval_reference(q, k, v, 1, 10), atol=tol, rtol=0)
    retrieval.causal_retrieval(q[:, :, :200], k[:, :, :200], v[:, :, :200], 1, 10)  # 4 blocks or fewer: dense band
    assert calls == [1]
