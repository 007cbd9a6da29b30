"""Read text corpora as lists of documents.

A source is one of

* a plain-text file, or a folder searched recursively for ``*.txt`` files (read in sorted path order),
  split into documents by ``separator``: ``"eot"`` (a line holding only ``<|endoftext|>``) or
  ``"blank"`` (one or more blank lines);
* a ``.jsonl`` / ``.json`` file with one JSON object per line whose ``text_field`` holds a document
  (a line that is a bare JSON string is taken as the document itself);
* a named dataset, ``NAME`` or ``NAME:SPLIT`` with NAME in :data:`NAMED_DATASETS`, fetched with the
  Hugging Face ``datasets`` library when it is installed and the network works.

Documents are stripped of surrounding whitespace and empty ones are dropped. Every problem with a
source raises a ``ValueError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

EOT = "<|endoftext|>"
SEPARATORS = ("eot", "blank")

# name -> (Hugging Face dataset id, default split, text field)
NAMED_DATASETS = {
    "tinystories": ("roneneldan/TinyStories", "train", "text"),
    "simplewiki": ("rahular/simple-wikipedia", "train", "text"),
}

_EOT_LINE = re.compile(r"^<\|endoftext\|>[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def shared_data_dir() -> Path | None:
    """The read-only shared data folder, or None when it is absent.

    Taken from ``$MOSAICS_SHARED_DATA`` (``mosaics --shared-data DIR`` sets it), else, in a source
    checkout only (never under an installed package), ``<checkout>/../shared/data``.
    """
    env = os.environ.get("MOSAICS_SHARED_DATA")
    if env:
        path = Path(env)
    else:
        checkout = Path(__file__).resolve().parents[3]  # src/memory_mosaics/data/corpus.py -> the checkout
        if not (checkout / "pyproject.toml").is_file():
            return None
        path = checkout.parent / "shared" / "data"
    return path if path.is_dir() else None


def read_documents(source: str | os.PathLike, separator: str = "eot", text_field: str = "text") -> list[str]:
    """Return the non-empty documents of ``source`` (a path or a dataset name, see module docstring)."""
    if separator not in SEPARATORS:
        raise ValueError(f"unknown separator {separator!r}; expected one of {', '.join(SEPARATORS)}")
    path = Path(source)
    if not path.exists():
        if str(source).split(":")[0] in NAMED_DATASETS:
            docs = _read_named(str(source))
        else:
            raise ValueError(f"corpus path not found: {source}")
    elif path.is_dir():
        docs = [d for f in corpus_files(path) for d in split_text(_read_utf8(f), separator)]
    elif path.suffix in (".jsonl", ".json"):
        docs = _read_jsonl(path, text_field)
    else:
        docs = split_text(_read_utf8(path), separator)
    if not docs:
        raise ValueError(f"empty corpus: no documents found in {source}")
    return docs


def corpus_files(source: str | os.PathLike) -> list[Path]:
    """The files a local ``source`` is read from (empty for a named dataset)."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.txt") if p.is_file())
    return [path] if path.is_file() else []


def split_text(text: str, separator: str = "eot") -> list[str]:
    """Split ``text`` into stripped, non-empty documents at ``separator`` boundaries."""
    text = text.replace("\r\n", "\n")
    pattern = _EOT_LINE if separator == "eot" else _BLANK_LINES
    return [d for d in (part.strip() for part in pattern.split(text)) if d]


def _read_utf8(path: Path) -> str:
    """The text of ``path``; bytes that are not UTF-8, or NUL bytes (a binary file, never text), raise
    ``ValueError`` with the offset."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid UTF-8 (byte offset {err.start})") from None
    if "\x00" in text:
        raise ValueError(f"{path} holds NUL bytes (byte offset {data.index(0)}): a binary file, not text")
    return text


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}:{lineno}: JSON nested too deeply") from None
        if isinstance(record, dict):
            if text_field not in record:
                raise ValueError(f"{path}:{lineno}: no field {text_field!r} (use --text-field)")
            record = record[text_field]
        if not isinstance(record, str):
            raise ValueError(f"{path}:{lineno}: the document is a {type(record).__name__}, not a string")
        if record.strip():
            docs.append(record.strip())
    return docs


def _read_named(source: str) -> list[str]:
    name, _, split = source.partition(":")
    repo, default_split, field = NAMED_DATASETS[name]
    hint = "pass a local path instead (a .txt file or folder, or a .jsonl file)"
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"dataset {name!r} needs the `datasets` package, which is not installed "
            f"(pip install 'memory-mosaics[datasets]'); {hint}"
        ) from None
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _online():
        raise ValueError(f"dataset {name!r} needs network access to huggingface.co, which is unavailable; {hint}")
    try:
        rows = datasets.load_dataset(repo, split=split or default_split)
    except Exception as err:  # the library raises many types; report any as one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not load {repo!r} ({reason}); {hint}") from None
    return [t.strip() for t in rows[field] if t.strip()]


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
