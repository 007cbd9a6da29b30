"""Text data layer: corpus reading, tokenizers, the memmap token cache and batch sampling."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from memory_mosaics.data.corpus import read_documents, shared_data_dir, split_text
from memory_mosaics.data.tokenized import MANIFEST_FILE, TOKENS_FILE, TokenizedCorpus
from memory_mosaics.data.tokenizers import (
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_spec,
    train_bpe,
)

EOT = "<|endoftext|>"
DOCS = [
    "Once upon a time, there was a little cat named Tom.\nTom liked to play.",
    "The sun was hot. Lily ran to the park with her dog, Max!",
    '"Can I help?" asked Ben. His mom smiled and said yes.',
    "A bird sang on a tree. The tree was big and green and old.",
] * 5


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids, end-of-text = 256: makes token streams easy to predict in tests."""

    def __init__(self, vocab_size=257, tag="bytes"):
        self.vocab_size, self.eot_id, self.tag = vocab_size, 256, tag

    def encode(self, text):
        return list(text.encode())

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def save(self, directory):
        raise NotImplementedError

    @property
    def fingerprint(self):
        return f"{self.tag}:{self.vocab_size}"


def byte_stream(docs):
    return [i for d in docs for i in [*d.encode(), 256]]


def gpt2_ranks() -> Path:
    root = shared_data_dir()
    if root is None or not (root / "tokenizers" / "gpt2.tiktoken").is_file():
        pytest.skip("shared GPT-2 ranks file not available")
    return root / "tokenizers" / "gpt2.tiktoken"


# ---- corpus reading -------------------------------------------------------------------------


def test_eot_separator_splits_only_on_whole_marker_lines(tmp_path):
    text = f"\nfirst doc\nline two\n{EOT}\r\nsecond {EOT} inline stays\n{EOT}\n\n{EOT}\nthird\n{EOT}\n"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode())
    assert read_documents(path) == ["first doc\nline two", f"second {EOT} inline stays", "third"]


def test_blank_separator_splits_on_blank_line_runs():
    text = "a b\nc\n\n  \n\nd\n \t\ne\n\n"
    assert split_text(text, "blank") == ["a b\nc", "d", "e"]
    assert split_text(text, "eot") == [text.strip()]


def test_folder_reads_txt_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text(f"two\n{EOT}\nthree")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "skip.md").write_text("not a corpus file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("four\n\nfive")
    assert read_documents(tmp_path) == ["one", "two", "three", "four\n\nfive"]
    assert read_documents(tmp_path, separator="blank") == ["one", f"two\n{EOT}\nthree", "four", "five"]


def test_jsonl_text_field_and_bare_strings(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"text": "alpha", "story": "s1"}, {"text": "  ", "story": "s2"}, "gamma"]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_documents(path) == ["alpha", "gamma"]
    assert read_documents(path, text_field="story") == ["s1", "s2", "gamma"]
    with pytest.raises(ValueError, match=r"c.jsonl:1: no field 'body'"):
        read_documents(path, text_field="body")
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"c.jsonl:2: invalid JSON"):
        read_documents(path)


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_corpus_errors_are_one_line(tmp_path):
    assert "not found" in one_line_error(read_documents, tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(f"\n  \n{EOT}\n\n")
    assert "empty corpus" in one_line_error(read_documents, tmp_path / "empty.txt")
    (tmp_path / "emptydir").mkdir()
    assert "empty corpus" in one_line_error(read_documents, tmp_path / "emptydir")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("héllo".encode() + b"\xff\xfe rest")
    message = one_line_error(read_documents, bad)
    assert "bad.txt" in message and "byte offset 6" in message
    assert "separator" in one_line_error(read_documents, tmp_path / "empty.txt", separator="para")


def test_named_datasets_fail_cleanly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("tinystories", "simplewiki:validation"):
        assert "local path" in one_line_error(read_documents, name)


def test_shared_data_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(tmp_path / "absent"))
    assert shared_data_dir() is None


# ---- tokenizers -------------------------------------------------------------------------


def test_gpt2_known_ids_and_spec_round_trip(tmp_path):
    ranks = gpt2_ranks()
    tok = GPT2Tokenizer(ranks)
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode(EOT) != [50256]  # text is encoded literally
    assert tok.decode(tok.encode("Hi there") + [tok.eot_id]) == "Hi there" + EOT
    spec_path = tok.save(tmp_path)
    spec = json.loads(spec_path.read_text())
    assert spec["ranks_sha256"] == tok.ranks_sha256 and spec["ranks_path"] == "gpt2.tiktoken"  # relative
    assert (tmp_path / "gpt2.tiktoken").read_bytes() == ranks.read_bytes()  # the ranks travel with the spec
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)  # the folder works wherever it goes (no absolute path inside)
    again = load_tokenizer(moved)
    assert isinstance(again, GPT2Tokenizer) and again.fingerprint == tok.fingerprint
    assert again.ranks_path == (moved / "gpt2.tiktoken").resolve()
    assert tokenizer_from_spec(f"gpt2:{ranks}").encode("Hello world") == [15496, 995]


def test_gpt2_spec_errors(tmp_path, monkeypatch):
    ranks = gpt2_ranks()
    tok = GPT2Tokenizer(ranks)
    spec_path = tok.save(tmp_path)
    spec = json.loads(spec_path.read_text())
    spec_path.write_text(json.dumps({**spec, "ranks_sha256": "0" * 64}))
    assert "sha256" in one_line_error(load_tokenizer, tmp_path)
    spec_path.write_text(json.dumps({**spec, "ranks_path": "gone.tiktoken"}))  # a name beside the spec
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(tmp_path / "absent"))
    assert "missing" in one_line_error(load_tokenizer, tmp_path)
    assert "not found" in one_line_error(GPT2Tokenizer, tmp_path / "gone.tiktoken")


def test_bpe_train_save_load_round_trip(tmp_path):
    tok = train_bpe(DOCS, vocab_size=320)
    assert 257 <= tok.vocab_size <= 320
    assert tok.decode([tok.eot_id]) == EOT
    texts = ["Once upon a time, Tom ran.", "  spaces\n\n\ttabs  ", "unseen: ünïcødé 日本語 🙂", f"literal {EOT} text"]
    assert len(tok.encode("Once upon a time")) < len("Once upon a time")  # merges were learnt
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.eot_id == tok.eot_id and loaded.vocab_size == tok.vocab_size
    for text in texts:
        ids = loaded.encode(text)
        assert ids == tok.encode(text) and tok.eot_id not in ids
        assert loaded.decode(ids) == text
    assert loaded.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tokenizer_from_spec(str(tmp_path)).fingerprint == tok.fingerprint


def test_tokenizer_spec_errors():
    assert "needs training documents" in one_line_error(tokenizer_from_spec, "bpe:300")
    assert "bpe:VOCAB_SIZE" in one_line_error(tokenizer_from_spec, "bpe:big", DOCS)
    assert "unknown tokenizer spec" in one_line_error(tokenizer_from_spec, "wordpiece")
    assert "at least 257" in one_line_error(train_bpe, DOCS, 100)
    assert tokenizer_from_spec("bpe:300", DOCS).vocab_size <= 300


# ---- token cache and sampling -----------------------------------------------------------------


def build(source, cache, tokenizer=None, **kw):
    return TokenizedCorpus.build_or_load(source, tokenizer or ByteTokenizer(), cache, progress=False, **kw)


def test_cache_stream_and_manifest(tmp_path):
    corpus = build(DOCS, tmp_path / "cache")
    assert corpus.built and corpus.tokens.dtype == np.uint16
    assert corpus.tokens.tolist() == byte_stream(DOCS)
    manifest = json.loads((tmp_path / "cache" / MANIFEST_FILE).read_text())
    assert manifest["num_tokens"] == len(corpus) and manifest["num_documents"] == len(DOCS) == corpus.num_documents
    assert manifest["tokenizer"] == "bytes:257" and manifest["format_version"] == 1
    wide = build(["ab"], tmp_path / "wide", ByteTokenizer(vocab_size=70_000))
    assert wide.tokens.dtype == np.uint32


def test_cache_rebuilds_only_when_source_or_tokenizer_changes(tmp_path):
    source, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    source.write_text(f"one two\n{EOT}\nthree\n")
    assert build(source, cache).built
    assert not build(source, cache).built
    source.write_text(f"one two\n{EOT}\nthree four\n")
    changed = build(source, cache)
    assert changed.built and changed.tokens.tolist() == byte_stream(["one two", "three four"])
    assert not build(source, cache).built
    assert build(source, cache, ByteTokenizer(tag="other")).built
    assert build(source, cache, separator="blank").built
    (cache / TOKENS_FILE).write_bytes(b"\0\0")  # truncated stream
    assert build(source, cache, separator="blank").built
    stream = bytearray((cache / TOKENS_FILE).read_bytes())
    stream[3] ^= 1  # one bit flipped in place: same size, same manifest
    (cache / TOKENS_FILE).write_bytes(bytes(stream))
    rebuilt = build(source, cache, separator="blank")
    assert rebuilt.built and bytes(rebuilt.tokens) != bytes(stream)
    assert not build(source, cache, separator="blank").built
    assert build(DOCS, cache).built and not build(list(DOCS), cache).built


def test_random_crops_are_deterministic_shifted_windows(tmp_path):
    corpus = build(DOCS, tmp_path / "cache")
    stream = np.asarray(byte_stream(DOCS))
    g = torch.Generator().manual_seed(123)
    x, y = corpus.random_crops(8, 16, g)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = torch.randint(0, len(stream) - 16, (8,), generator=torch.Generator().manual_seed(123))
    for row, s in zip(x, starts.tolist()):
        assert row.tolist() == stream[s : s + 16].tolist()
    assert torch.equal(y[:, -1], torch.from_numpy(stream[starts.numpy() + 16]))
    again = corpus.random_crops(8, 16, torch.Generator().manual_seed(123))
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    state = g.get_state()  # resuming from a saved generator state replays the same batches
    nxt = corpus.random_crops(8, 16, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(nxt[0], corpus.random_crops(8, 16, g2)[0])
    assert not torch.equal(x, nxt[0])


def test_eval_windows_tile_the_stream(tmp_path):
    corpus = build(DOCS, tmp_path / "cache")
    stream, context = np.asarray(byte_stream(DOCS)), 24
    n = corpus.num_eval_windows(context)
    assert n == (len(stream) - 1) // context
    windows = list(corpus.eval_windows(context))
    assert len(windows) == n and all(x.shape == (1, context) for x, _ in windows)
    xs = torch.cat([x for x, _ in windows], dim=1).flatten()
    ys = torch.cat([y for _, y in windows], dim=1).flatten()
    assert xs.tolist() == stream[: n * context].tolist()
    assert ys.tolist() == stream[1 : n * context + 1].tolist()
    batched = list(corpus.eval_windows(context, batch_size=5))
    assert [x.shape[0] for x, _ in batched] == [5] * (n // 5) + ([n % 5] if n % 5 else [])
    assert torch.equal(torch.cat([x for x, _ in batched]).flatten(), xs)
    full = torch.cat([x for x, _ in windows])
    subset = torch.cat([x for x, _ in corpus.eval_windows(context, max_windows=4)])
    assert torch.equal(subset, full[[0, n // 4, n // 2, 3 * n // 4]])  # evenly spaced, in order
    assert len(list(corpus.eval_windows(context, max_windows=n + 3))) == n


def test_too_small_corpus_for_context(tmp_path):
    corpus = build(["abcd"], tmp_path / "cache")  # 5 tokens with the end-of-text id
    x, y = corpus.random_crops(2, 4, torch.Generator().manual_seed(0))
    assert x.tolist() == [[97, 98, 99, 100]] * 2 and y[0].tolist() == [98, 99, 100, 256]
    message = one_line_error(corpus.random_crops, 2, 5, torch.Generator())
    assert "5 tokens" in message and "context 5" in message
    one_line_error(lambda: list(corpus.eval_windows(5)))


def test_real_corpus_cache_matches_published_checksum(tmp_path):
    root = shared_data_dir()
    if root is None or not (root / "tinystories" / "valid.txt").is_file():
        pytest.skip("shared TinyStories not available")
    tok = GPT2Tokenizer(gpt2_ranks())
    valid = root / "tinystories" / "valid.txt"
    corpus = build(valid, tmp_path / "cache", tok)
    assert corpus.num_documents == 409
    assert corpus.manifest["source_sha256"] == "5359061ef6c13b08ed7597272413fab3e19ccba1f1cd64171d15e025f6ede574"
    assert int((corpus.tokens == tok.eot_id).sum()) == 409 and corpus.tokens[-1] == tok.eot_id
    assert tok.decode(corpus.tokens[:1000].tolist()).split(EOT)[0] == read_documents(valid)[0]
    assert os.path.getsize(tmp_path / "cache" / TOKENS_FILE) == 2 * len(corpus)
