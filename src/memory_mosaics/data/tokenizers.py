"""Tokenizers behind one small interface, saved as ``tokenizer.json`` in a directory.

Two implementations:

* :class:`GPT2Tokenizer`, the GPT-2 BPE run by ``tiktoken`` from a local ranks file
  (``<|endoftext|>`` = 50256). Its ``tokenizer.json`` records the ranks file's path and sha256
  instead of a copy; loading re-verifies the checksum.
* :class:`BPETokenizer`, a byte-level BPE trained with Hugging Face ``tokenizers``
  (:func:`train_bpe`); its ``tokenizer.json`` is the library's own full serialisation.

Both encode text literally: the string ``<|endoftext|>`` inside text is *not* turned into the
end-of-text id; append :attr:`Tokenizer.eot_id` yourself between documents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from ..io import atomic_write
from .corpus import EOT, shared_data_dir

SPEC_FILE = "tokenizer.json"
RANKS_FILE = "gpt2.tiktoken"  # the copy of the GPT-2 ranks saved beside a GPT-2 tokenizer.json
GPT2_FORMAT = "memory_mosaics/gpt2-tiktoken"
GPT2_EOT_ID = 50256
# GPT-2's pre-tokenisation regex (tiktoken's r50k_base / gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer(ABC):
    """Text <-> token ids. ``vocab_size`` counts every id (special ones included)."""

    vocab_size: int
    eot_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-text id added)."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed in parallel."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the end-of-text id decodes to ``<|endoftext|>``."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/tokenizer.json`` and return its path."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the id mapping could change (used to key caches)."""


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE from a local ``gpt2.tiktoken`` ranks file (default: the shared data folder)."""

    def __init__(self, ranks_path: str | os.PathLike | None = None):
        import tiktoken

        path = Path(ranks_path) if ranks_path else _default_ranks_path()
        if not path.is_file():
            raise ValueError(f"GPT-2 ranks file not found: {path}")
        data = path.read_bytes()
        self.ranks_path = path.resolve()
        self.ranks_sha256 = hashlib.sha256(data).hexdigest()
        ranks = _parse_ranks(path, data)
        self._enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT: GPT2_EOT_ID},
            explicit_n_vocab=GPT2_EOT_ID + 1,
        )
        self.vocab_size = self._enc.n_vocab
        self.eot_id = GPT2_EOT_ID

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))

    @property
    def fingerprint(self) -> str:
        return f"gpt2-tiktoken:{self.ranks_sha256}"

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and a copy of the ranks file (``gpt2.tiktoken``) beside it: the
        spec names the copy by its relative name, so the folder can move or be uploaded."""
        copy = Path(directory) / RANKS_FILE
        copy.parent.mkdir(parents=True, exist_ok=True)
        if not copy.exists() or copy.resolve() != self.ranks_path:
            atomic_write(copy, lambda tmp: shutil.copyfile(self.ranks_path, tmp))
        spec = {
            "format": GPT2_FORMAT,
            "ranks_path": RANKS_FILE,
            "ranks_sha256": self.ranks_sha256,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }
        return _write_spec(directory, json.dumps(spec, indent=1))

    @classmethod
    def from_spec(cls, spec: dict, spec_path: Path) -> GPT2Tokenizer:
        """Rebuild from a saved spec; ``ranks_path`` is a file name beside the spec (a path, absolute or
        with a folder, is refused: a checkpoint never makes the tool read elsewhere); falls back to the
        shared data folder if the recorded file is gone."""
        name = spec.get("ranks_path")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(
                f"{spec_path}: ranks_path must be the name of a file beside it (got {name!r}); "
                "a tokenizer never reads outside its folder: use another checkpoint"
            )
        path = Path(spec_path).parent / name
        if not path.is_file() and shared_data_dir() is not None:
            path = _default_ranks_path()
        if not path.is_file():
            raise ValueError(
                f"GPT-2 ranks file {spec['ranks_path']} named in {spec_path} is missing; "
                f"restore it or set MOSAICS_SHARED_DATA to a folder holding tokenizers/gpt2.tiktoken"
            )
        tok = cls(path)
        if tok.ranks_sha256 != spec["ranks_sha256"]:
            raise ValueError(
                f"GPT-2 ranks file {path} has sha256 {tok.ranks_sha256}, but {spec_path} expects {spec['ranks_sha256']}"
            )
        return tok


class BPETokenizer(Tokenizer):
    """A byte-level BPE held by a Hugging Face ``tokenizers.Tokenizer`` with an ``<|endoftext|>`` token."""

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self._tok.encode_special_tokens = True  # encode "<|endoftext|>" inside text as plain bytes
        eot_id = self._tok.token_to_id(EOT)
        if eot_id is None:
            raise ValueError(f"the BPE tokenizer has no {EOT} token")
        self.eot_id = eot_id
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        return "bpe:" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        return _write_spec(directory, self._tok.to_str(pretty=True))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a Hugging Face ``tokenizer.json``."""
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))


def train_bpe(documents: Sequence[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids (256 bytes + merges + ``<|endoftext|>``) on ``documents``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"BPE vocab_size must be at least 257 (256 bytes + {EOT}), got {vocab_size}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer, length=len(documents))
    return BPETokenizer(tok)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` (by either implementation's ``save``)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ValueError(f"no {SPEC_FILE} in {directory}")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a valid tokenizer file ({err})") from None
    if spec.get("format") == GPT2_FORMAT:
        return GPT2Tokenizer.from_spec(spec, path)
    return BPETokenizer.from_file(path)


def tokenizer_from_spec(spec: str, documents: Sequence[str] | None = None) -> Tokenizer:
    """Build a tokenizer from a command-line spec.

    ``spec`` is a directory holding ``tokenizer.json``, ``"gpt2"`` or ``"gpt2:PATH_TO_RANKS"``, or
    ``"bpe:VOCAB_SIZE"`` (trained on ``documents``, which are then required).
    """
    if Path(spec).is_dir():
        return load_tokenizer(spec)
    kind, _, arg = spec.partition(":")
    if kind == "gpt2":
        return GPT2Tokenizer(arg or None)
    if kind == "bpe":
        if not arg.isdigit():
            raise ValueError(f"bad tokenizer spec {spec!r}: expected bpe:VOCAB_SIZE, e.g. bpe:8192")
        if documents is None:
            raise ValueError(f"tokenizer spec {spec!r} trains a BPE and needs training documents")
        return train_bpe(documents, int(arg))
    raise ValueError(f"unknown tokenizer spec {spec!r}: expected gpt2[:RANKS_PATH], bpe:VOCAB_SIZE or a directory")


def _parse_ranks(path: Path, data: bytes) -> dict[bytes, int]:
    """The ``BASE64_TOKEN RANK`` lines of a tiktoken ranks file; a malformed one raises ``ValueError``
    naming the file and the line."""
    ranks = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{path}, line {number}: not a tiktoken ranks line (BASE64_TOKEN RANK); use the GPT-2 ranks file"
            ) from None
    if not ranks:
        raise ValueError(f"{path} holds no ranks; use the GPT-2 ranks file (gpt2.tiktoken)")
    return ranks


def _default_ranks_path() -> Path:
    root = shared_data_dir()
    if root is None:
        raise ValueError(
            "no GPT-2 ranks file given and the shared data folder was not found; "
            "pass gpt2:PATH_TO/gpt2.tiktoken or set MOSAICS_SHARED_DATA"
        )
    return root / "tokenizers" / "gpt2.tiktoken"


def _write_spec(directory: str | os.PathLike, text: str) -> Path:
    path = Path(directory) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
