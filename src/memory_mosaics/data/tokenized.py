"""A tokenised corpus cached on disk as one memory-mapped token stream.

``cache_dir`` holds ``tokens.bin`` (every document's ids followed by the end-of-text id, as raw
uint16 when the vocabulary fits, else uint32) and ``manifest.json`` (what it was built from).
:meth:`TokenizedCorpus.build_or_load` reuses the cache while the source bytes, the reader settings
and the tokenizer are unchanged, and the stream itself hashes to the sha256 its manifest recorded
when it was written (so a stream edited in place, even at the same size, is rebuilt); it rebuilds it
otherwise. One cache directory holds one corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from tqdm.auto import tqdm

from ..io import atomic_write, atomic_write_text
from .corpus import corpus_files, read_documents
from .tokenizers import Tokenizer

FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
MANIFEST_FILE = "manifest.json"
ENCODE_BATCH_DOCS = 2048
# Manifest fields that must match for a cache to be reused.
_KEY_FIELDS = ("format_version", "source_sha256", "separator", "text_field", "tokenizer", "dtype")


class TokenizedCorpus:
    """A read-only token stream of shape (num_tokens,), memory-mapped from ``cache_dir/tokens.bin``.

    Attributes: ``tokens`` (the np.memmap), ``manifest`` (dict), ``built`` (True when this call
    tokenised the source, False when the cache was reused).
    """

    def __init__(self, cache_dir: str | os.PathLike, built: bool = False):
        self.cache_dir = Path(cache_dir)
        self.manifest = json.loads((self.cache_dir / MANIFEST_FILE).read_text())
        self.tokens = np.memmap(
            self.cache_dir / TOKENS_FILE, dtype=self.manifest["dtype"], mode="r", shape=(self.manifest["num_tokens"],)
        )
        self.built = built

    @classmethod
    def build_or_load(
        cls,
        source: str | os.PathLike | Sequence[str],
        tokenizer: Tokenizer,
        cache_dir: str | os.PathLike,
        *,
        separator: str = "eot",
        text_field: str = "text",
        progress: bool = True,
    ) -> TokenizedCorpus:
        """Open the cache in ``cache_dir``, first (re)building it if it does not match.

        ``source`` is a list of documents or anything :func:`~memory_mosaics.data.corpus.read_documents`
        accepts (read with ``separator`` and ``text_field``).
        """
        cache_dir = Path(cache_dir)
        files: list[Path] = []
        if isinstance(source, (str, os.PathLike)):
            files = corpus_files(source)
            docs = None if files else read_documents(source, separator, text_field)
        else:
            docs = list(source)
            if not docs:
                raise ValueError("empty corpus: the document list is empty")
        key = {
            "format_version": FORMAT_VERSION,
            "source_sha256": _files_sha256(files) if docs is None else _documents_sha256(docs),
            "separator": separator,
            "text_field": text_field,
            "tokenizer": tokenizer.fingerprint,
            "dtype": "uint16" if tokenizer.vocab_size <= 2**16 else "uint32",
        }
        if _cache_matches(cache_dir, key):
            return cls(cache_dir)
        if docs is None:
            docs = read_documents(source, separator, text_field)
        label = str(source) if isinstance(source, (str, os.PathLike)) else f"<{len(docs)} documents>"
        _build(cache_dir, docs, tokenizer, key, label, progress)
        return cls(cache_dir, built=True)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return self.manifest["num_documents"]

    def random_crops(
        self, batch_size: int, context: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x, y), LongTensors of shape (batch_size, context): random windows of the stream,
        y being x shifted left by one token (y[:, t] is the token after x[:, t]).

        Crop starts are drawn uniformly with ``torch.randint`` from the CPU ``generator``, so the
        batches are a function of the generator state (save and restore it to resume exactly).
        """
        self._check_context(context)
        starts = torch.randint(0, len(self.tokens) - context, (batch_size,), generator=generator).numpy()
        return self._windows(starts, context)

    def num_eval_windows(self, context: int) -> int:
        """How many non-overlapping length-``context`` inputs tile the stream (the last needs one more target token)."""
        self._check_context(context)
        return (len(self.tokens) - 1) // context

    def eval_windows(
        self, context: int, max_windows: int | None = None, batch_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) LongTensors of shape (b, context), b <= batch_size, in stream order.

        Window i has x = tokens[i*context : (i+1)*context] and y = x shifted by one token, so the
        windows tile the stream without overlap and every token after the first is predicted once.
        With ``max_windows`` an evenly spaced subset of that many windows is taken.
        """
        n = self.num_eval_windows(context)
        if max_windows is None or max_windows >= n:
            index = np.arange(n)
        else:
            index = np.arange(max_windows) * n // max_windows
        for i in range(0, len(index), batch_size):
            yield self._windows(index[i : i + batch_size] * context, context)

    def _windows(self, starts: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens[s : s + context + 1] for all starts s, in one indexing op -> (x, y), each (len(starts), context)."""
        chunk = sliding_window_view(np.asarray(self.tokens), context + 1)[starts]
        return torch.from_numpy(chunk[:, :-1].astype(np.int64)), torch.from_numpy(chunk[:, 1:].astype(np.int64))

    def _check_context(self, context: int) -> None:
        if context < 1:
            raise ValueError(f"context must be a positive number of tokens, got {context}")
        if len(self.tokens) < context + 1:
            raise ValueError(
                f"corpus in {self.cache_dir} has {len(self.tokens)} tokens, too few for context "
                f"{context} (needs at least {context + 1}); use a larger corpus or a shorter context"
            )


def _build(cache_dir: Path, docs: Sequence[str], tokenizer: Tokenizer, key: dict, label: str, progress: bool) -> None:
    """Tokenise ``docs`` in batches into ``cache_dir/tokens.bin``, then write the manifest."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / MANIFEST_FILE).unlink(missing_ok=True)
    num_tokens = 0

    stream_hash = hashlib.sha256()

    def write_tokens(tmp: str) -> None:
        nonlocal num_tokens
        with (
            open(tmp, "wb") as out,
            tqdm(total=len(docs), unit="doc", desc=f"tokenising {label}", disable=not progress) as bar,
        ):
            for i in range(0, len(docs), ENCODE_BATCH_DOCS):
                flat: list[int] = []
                for ids in tokenizer.encode_batch(docs[i : i + ENCODE_BATCH_DOCS]):
                    flat.extend(ids)
                    flat.append(tokenizer.eot_id)
                chunk = np.asarray(flat, dtype=key["dtype"]).tobytes()
                out.write(chunk)
                stream_hash.update(chunk)
                num_tokens += len(flat)
                bar.update(min(ENCODE_BATCH_DOCS, len(docs) - i))

    atomic_write(cache_dir / TOKENS_FILE, write_tokens)
    manifest = {
        **key,
        "source": label,
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "num_tokens": num_tokens,
        "num_documents": len(docs),
        "tokens_sha256": stream_hash.hexdigest(),
    }
    atomic_write_text(cache_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))


def _cache_matches(cache_dir: Path, key: dict) -> bool:
    try:
        manifest = json.loads((cache_dir / MANIFEST_FILE).read_text())
        size = (cache_dir / TOKENS_FILE).stat().st_size
    except (OSError, json.JSONDecodeError):
        return False
    if not (
        all(manifest.get(k) == key[k] for k in _KEY_FIELDS)
        and size == manifest.get("num_tokens", -1) * np.dtype(key["dtype"]).itemsize
    ):
        return False
    with open(cache_dir / TOKENS_FILE, "rb") as f:  # the stream as written, byte for byte
        return hashlib.file_digest(f, "sha256").hexdigest() == manifest.get("tokens_sha256")


def _files_sha256(files: Sequence[Path]) -> str:
    """sha256 over the files' bytes (names included when there are several)."""
    h = hashlib.sha256()
    for f in files:
        if len(files) > 1:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _documents_sha256(docs: Sequence[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()
