"""The package's own generate: top-p, repetition penalty, stop strings, and left-padded batches of
prompts of different lengths (each row as when decoded alone)."""

import pytest
import torch
from helpers import v2_switches

from memory_mosaics import GPTLM, GPTConfig, MosaicConfig, MosaicLM
from memory_mosaics.models.generation import Sampling, prompt_lengths, truncate_at_stop

V = 61


def mosaic():
    return MosaicLM(MosaicConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0)).eval()


def mosaic_v2():
    sizes = dict(vocab_size=V, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0)
    return MosaicLM(MosaicConfig(**sizes, **v2_switches(window=4, skip_min=3, skip_max=5))).eval()


def gpt():
    return GPTLM(GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, dropout=0.0, block_size=64)).eval()


MODELS = {"mosaic": mosaic, "mosaic_v2": mosaic_v2, "gpt": gpt}


def left_pad(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, T - len(r) :] = r
        mask[i, T - len(r) :] = 1
    return idx, mask


def test_top_p_keeps_the_smallest_most_likely_set_reaching_p():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    for p, kept in [(0.35, {1}), (0.4, {1}), (0.41, {1, 3}), (0.7, {1, 3}), (0.71, {1, 3, 4}), (1.0, set(range(5)))]:
        scores = Sampling(temperature=1.0, top_p=p).scores(logits, None)
        assert set(torch.isfinite(scores[0]).nonzero()[:, 0].tolist()) == kept, p


def test_top_p_matches_a_literal_loop_on_random_logits():
    logits = torch.randn(4, 50) * 3
    for p in (0.1, 0.5, 0.9):
        scores = Sampling(temperature=0.7, top_p=p).scores(logits, None)
        for row in range(4):
            probs = torch.softmax(logits[row].double() / 0.7, -1).tolist()
            order = sorted(range(50), key=lambda i: -probs[i])
            kept, mass = set(), 0.0
            for i in order:
                kept.add(i)
                mass += probs[i]
                if mass >= p - 1e-6:
                    break
            assert set(torch.isfinite(scores[row]).nonzero()[:, 0].tolist()) == kept


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 3.0, -4.0]])
    seen = torch.tensor([[True, True, False, False]])
    scores = Sampling(temperature=0, repetition_penalty=2.0).scores(logits, seen)
    assert scores.tolist() == [[1.0, -2.0, 3.0, -4.0]]


def test_repetition_penalty_changes_greedy_decoding_away_from_repeats():
    model = mosaic()
    prompt = torch.randint(0, V, (1, 6))
    plain = model.generate(prompt, 30, temperature=0)[0, 6:]
    penalised = model.generate(prompt, 30, temperature=0, repetition_penalty=1e6)[0, 6:]
    assert len(set(penalised.tolist()) & set(prompt[0].tolist())) == 0  # huge penalty: no token repeats
    assert len(set(penalised.tolist())) == 30
    assert len(set(plain.tolist())) < 30  # a small random model repeats itself without it


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0.0), dict(top_k=0)])
def test_bad_sampling_options_are_refused(bad):
    with pytest.raises(ValueError):
        mosaic().generate(torch.zeros(1, 3, dtype=torch.long), 2, **bad)


def test_sampling_with_top_p_is_reproducible_and_stays_in_the_nucleus():
    model = mosaic()
    prompt = torch.randint(0, V, (2, 5))
    kw = dict(temperature=1.0, top_p=0.3, generator=torch.Generator().manual_seed(1))
    a = model.generate(prompt, 10, **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    assert torch.equal(a, model.generate(prompt, 10, **kw))
    logits = model(a[:, :-1])[:, 4:]  # the logits each new token was drawn from
    for row in range(2):
        for t in range(10):
            probs = torch.softmax(logits[row, t], -1)
            chosen = int(a[row, 5 + t])
            assert probs[probs > probs[chosen]].sum() < 0.3 + 1e-5  # only tokens inside the top-0.3 mass


@pytest.mark.parametrize("name", MODELS)
def test_left_padded_batch_gives_each_row_its_one_by_one_tokens(name):
    model = MODELS[name]()
    rows = [torch.randint(1, V, (n,)) for n in (7, 2, 12, 7, 1)]
    idx, mask = left_pad(rows)
    out = model.generate(idx, 9, temperature=0, attention_mask=mask)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], 9, temperature=0)[0, len(r) :]
        assert torch.equal(out[i, idx.shape[1] :], alone), i


def test_left_padded_batch_with_repetition_penalty_ignores_the_padding():
    model = mosaic()
    rows = [torch.randint(1, V, (n,)) for n in (3, 8)]
    idx, mask = left_pad(rows, pad=5)  # the pad id is a real token id: it must not be penalised
    out = model.generate(idx, 8, temperature=0, attention_mask=mask, repetition_penalty=3.0)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], 8, temperature=0, repetition_penalty=3.0)[0, len(r) :]
        assert torch.equal(out[i, 8:], alone)


@pytest.mark.parametrize(
    "mask",
    [torch.tensor([[1, 0, 1]]), torch.tensor([[1, 1, 0]]), torch.tensor([[0, 0, 0]]), torch.tensor([[1, 1]])],
)
def test_masks_that_are_not_left_padding_are_refused(mask):
    with pytest.raises(ValueError, match="attention_mask"):
        prompt_lengths(torch.zeros(1, 3, dtype=torch.long), mask)


def test_stop_strings_finish_a_row_and_pad_it():
    model = mosaic()
    prompt = torch.randint(0, V, (2, 4))
    greedy = model.generate(prompt, 12, temperature=0)

    def decode(ids):
        return " ".join(f"<{i}>" for i in ids)

    stop = f"<{int(greedy[0, 6])}>"  # row 0's third new token
    out = model.generate(prompt, 12, temperature=0, stop_strings=[stop], decode=decode, pad_token=V - 1)
    for r in range(2):  # done: how many new tokens the row needs before its text contains the stop
        done = next((n for n in range(1, 13) if stop in decode(greedy[r, 4 : 4 + n].tolist())), None)
        if done is None:
            assert torch.equal(out[r], greedy[r])
        else:
            assert torch.equal(out[r, : 4 + done], greedy[r, : 4 + done])
            assert (out[r, 4 + done :] == V - 1).all()
    assert out.shape[1] <= greedy.shape[1]


def test_stop_strings_need_a_decoder():
    with pytest.raises(ValueError, match="decode"):
        mosaic().generate(torch.zeros(1, 2, dtype=torch.long), 3, stop_strings=["x"])


def test_truncate_at_stop_cuts_at_the_earliest_stop():
    assert truncate_at_stop("abc\n\nQ: d", ["Q:", "\n\n"]) == "abc"
    assert truncate_at_stop("abc", ["x"]) == "abc"


def test_temperature_sampling_without_options_is_unchanged():
    """No top-p / penalty: the same draw as softmax(logits / T) with the same generator."""
    model = mosaic()
    prompt = torch.randint(0, V, (1, 4))
    out = model.generate(prompt, 1, temperature=0.5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        probs = torch.softmax(model(prompt)[:, -1].float() / 0.5, -1)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7))
    assert int(out[0, -1]) == int(expected[0, 0])


@pytest.mark.parametrize("name", MODELS)
def test_caches_are_preallocated_for_the_whole_generation(name, monkeypatch):
    """generate reserves prompt + new tokens in every cache: no reallocation while decoding (40 + 100
    tokens outgrow the default first capacity of 2 x 40)."""
    from memory_mosaics.common import GrowingBuffer

    grown, claim = [], GrowingBuffer.claim  # every append claims its room first

    def spy(self, t=1):
        before = self.capacity
        index = claim(self, t)
        grown.append(self.capacity != before)
        return index

    monkeypatch.setattr(GrowingBuffer, "claim", spy)
    long_gpt = lambda: GPTLM(GPTConfig(vocab_size=V, n_layer=2, n_head=2, n_embd=16, block_size=256)).eval()  # noqa: E731
    (long_gpt if name == "gpt" else MODELS[name])().generate(torch.randint(0, V, (2, 40)), 100, temperature=0)
    assert grown and not any(grown)


def _compile_with(backend):
    real = torch.compile
    return lambda fn, **kw: real(fn, backend=backend, **kw)


@pytest.mark.parametrize("name", MODELS)
def test_compiled_step_gives_the_eager_tokens(name, monkeypatch):
    """compile=True traces the decoding step once with dynamic shapes (the cache grows every step)
    and decodes the eager tokens (aot_eager backend: the traced graphs, without code generation)."""
    model, prompt = MODELS[name](), torch.randint(0, V, (3, 11))
    eager = model.generate(prompt, 30, temperature=0)
    monkeypatch.setattr(torch, "compile", _compile_with("aot_eager"))
    torch._dynamo.reset()
    compiled = model.generate(prompt, 30, temperature=0, compile=True)
    torch._dynamo.reset()
    assert torch.equal(compiled, eager)


@pytest.mark.slow
def test_inductor_compiled_step_gives_the_eager_tokens():
    model, prompt = mosaic(), torch.randint(0, V, (2, 9))
    torch._dynamo.reset()
    assert torch.equal(
        model.generate(prompt, 20, temperature=0, compile=True), model.generate(prompt, 20, temperature=0)
    )
