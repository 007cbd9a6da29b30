"""Where a run's text comes from and where what is derived from it is cached.

* :func:`resolve_data_path` expands ``shared:RELATIVE`` into the shared data folder
  (``$MOSAICS_SHARED_DATA`` or ``mosaics --shared-data DIR``, else ``<checkout>/../shared/data`` in a
  source checkout), naming the file and how to point at it when it is missing;
* :func:`resolve_cache_dir` is the root of the caches (``$MOSAICS_CACHE_DIR``, else
  ``~/.cache/memory_mosaics``);
* :func:`build_tokenizer` returns the tokenizer a spec names, training a ``bpe:N`` one once per
  training corpus; :func:`open_corpus` returns a corpus tokenised once per tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from ..io import publish_directory
from .corpus import corpus_files, read_documents, shared_data_dir
from .tokenized import TokenizedCorpus
from .tokenizers import Tokenizer, load_tokenizer, tokenizer_from_spec


def resolve_data_path(source: str) -> str:
    """Expand a ``shared:`` prefix into the shared data folder; other sources are returned as is. A
    ``shared:`` path that leaves the folder (``shared:../..``, an absolute path, a link pointing out)
    is refused."""
    if not source.startswith("shared:"):
        return source
    relative = source[len("shared:") :]
    how = (
        f"set the environment variable MOSAICS_SHARED_DATA=DIR or pass `mosaics --shared-data DIR ...`, "
        f"where DIR/{relative} exists (README, Data), or give a local path instead of {source}"
    )
    root = shared_data_dir()
    if root is None:
        env = os.environ.get("MOSAICS_SHARED_DATA")
        where = f"MOSAICS_SHARED_DATA={env} is not a folder" if env else "the shared data folder was not found"
        raise ValueError(f"{source} needs the file {relative} of the shared data folder, but {where}; {how}")
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{source} leaves the shared data folder {root}; name a path inside it")
    if not path.exists():
        raise ValueError(f"{source}: {path} not found in the shared data folder {root}; {how}")
    return str(path)


def resolve_cache_dir(cache_dir: str = "") -> Path:
    """The root of the caches: ``cache_dir``, else ``$MOSAICS_CACHE_DIR``, else ~/.cache/memory_mosaics."""
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("MOSAICS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "memory_mosaics"


def source_key(*parts: str) -> str:
    """A short stable hash naming a cache entry."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build_tokenizer(
    spec: str, train: str, cache_root: Path, separator: str = "eot", text_field: str = "text", progress: bool = True
) -> Tokenizer:
    """The tokenizer ``spec`` names; a ``bpe:N`` one is trained once on the ``train`` corpus and
    cached under ``cache_root`` (keyed by the spec and the corpus files' paths, sizes and times)."""
    if not spec.startswith("bpe:"):
        return tokenizer_from_spec(spec)
    source = resolve_data_path(train)
    stamp = [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in corpus_files(source)] or [source]
    directory = cache_root / f"tokenizer-{spec.replace(':', '')}-{source_key(spec, separator, text_field, *stamp)}"
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    if progress:
        tqdm.write(f"training a {spec} tokenizer on {source}")
    tokenizer = tokenizer_from_spec(spec, read_documents(source, separator, text_field))
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}")
    try:
        tokenizer.save(tmp)
    except BaseException:  # e.g. a full disk: leave no partial folder in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_directory(tmp, directory)  # another run may have cached the same tokenizer meanwhile
    return tokenizer


def open_corpus(
    source: str,
    tokenizer: Tokenizer,
    cache_root: Path,
    separator: str = "eot",
    text_field: str = "text",
    progress: bool = True,
) -> TokenizedCorpus:
    """``source`` tokenised by ``tokenizer``, cached under ``cache_root`` (one folder per source and tokenizer)."""
    source = resolve_data_path(source)
    key = source_key(os.path.abspath(source), tokenizer.fingerprint, separator, text_field)
    directory = cache_root / f"tokens-{Path(source).stem or 'corpus'}-{key}"
    return TokenizedCorpus.build_or_load(
        source, tokenizer, directory, separator=separator, text_field=text_field, progress=progress
    )
