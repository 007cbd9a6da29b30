"""Per-head transforms memoised for decoding (common.frozen): reused while the parameters are
unchanged, recomputed after any change, never cached while gradients are recorded."""

import torch

from memory_mosaics import MosaicConfig, MosaicLM
from memory_mosaics.layers import LearnedBandwidth


def test_frozen_value_follows_its_parameters():
    bandwidth = LearnedBandwidth(3)
    n = torch.arange(4)
    with torch.no_grad():
        first = bandwidth(n)
        assert bandwidth(n).data_ptr() == first.data_ptr()  # memoised
        bandwidth.theta.add_(0.1)  # an optimiser step: same storage, new version
        changed = bandwidth(n)
    torch.testing.assert_close(changed, torch.exp(10 * (torch.full((3, 4), 0.2))) ** 2)
    bandwidth.load_state_dict({"theta": torch.zeros(3)})
    with torch.no_grad():
        torch.testing.assert_close(bandwidth(n), torch.ones(3, 4))
    assert bandwidth(n).requires_grad  # with gradients: computed, connected to theta


def test_decoding_after_an_update_uses_the_new_weights():
    torch.manual_seed(0)
    model = MosaicLM(MosaicConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0))
    model.eval()
    idx = torch.randint(0, 50, (1, 12))
    model.generate(idx, 3)  # fills the memoised transforms
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    optimizer.step()
    logits, state = model.prefill(idx[:, :8])
    full = model(idx)
    torch.testing.assert_close(logits, full[:, 7], atol=1e-5, rtol=1e-4)
    for t in range(8, 12):
        torch.testing.assert_close(model.step(idx[:, t : t + 1], state), full[:, t], atol=1e-5, rtol=1e-4)
