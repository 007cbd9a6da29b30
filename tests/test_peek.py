"""The value peek's own backward against autograd through the literal formula, and what it keeps."""

import pytest
import torch

from memory_mosaics.ops.peek import PeekValue, peek_value, peek_value_reference


@pytest.mark.parametrize("T", [1, 2, 37])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("learn_gamma", [True, False])
def test_peek_value_equals_reference_values_and_gradients(T, normalize, learn_gamma):
    torch.manual_seed(T)
    vt = torch.randn(2, 3, T, 5, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(3, dtype=torch.float64, requires_grad=learn_gamma)
    alpha = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_() if normalize else None
    inputs = [t for t in (vt, gamma, alpha) if t is not None and t.requires_grad]
    fast, ref = peek_value(vt, gamma, alpha), peek_value_reference(vt, gamma, alpha)
    torch.testing.assert_close(fast, ref, atol=1e-13, rtol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(fast, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_gradcheck():
    vt = torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(2, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(PeekValue.apply, (vt, gamma, alpha))


def test_backward_keeps_only_v_tilde():
    vt = torch.randn(1, 2, 64, 8, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        peek_value(vt, torch.rand(2), torch.ones(2, requires_grad=True))
    big = [t for t in saved if t.numel() >= vt.numel()]
    assert len(big) == 1 and big[0].data_ptr() == vt.data_ptr()
