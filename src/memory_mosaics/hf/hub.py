"""Checkpoints on the Hugging Face Hub: ``owner/name`` ids next to local folders.

:func:`resolve` turns a local folder (always used as it is, never looked up online) or a Hub id
into a local folder, downloading the repository's files through ``huggingface_hub``; without a
network (or with ``HF_HUB_OFFLINE=1`` and nothing cached) the error is one line naming the id and
what to do. :func:`push_to_hub` uploads a model as an HF folder (weights, config, remote code and
tokenizer: :mod:`.convert`). ``MosaicForCausalLM.from_pretrained("owner/name")`` and
``.push_to_hub(...)`` also work directly (``transformers``' Hub mixin).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder for a folder path or a Hub id ``owner/name`` (downloaded or from the cache)."""
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} is a file, not a checkpoint folder")
        return path
    name = str(name_or_path)
    if not REPO_ID.match(name):
        raise ValueError(f"{name} is neither a local folder nor a Hugging Face Hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(
            f"{name} is not a local folder; to download it from the Hub install the extra: "
            "pip install 'memory-mosaics[hf]'"
        ) from None
    try:
        return Path(snapshot_download(repo_id=name, revision=revision))
    except Exception as err:  # offline, unknown repository, no access: one line, not a traceback
        kind = type(err).__name__
        raise ValueError(
            f"{name} is not a local folder and could not be downloaded from the Hugging Face Hub ({kind}); "
            "check the id and your network (HF_HUB_OFFLINE=1 uses only the cache), or pass a local folder"
        ) from None


def push_to_hub(checkpoint: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload a package checkpoint or HF folder to ``repo_id`` as an HF folder; returns the repo URL."""
    from huggingface_hub import HfApi

    from .convert import is_hf_folder, to_hf

    checkpoint = Path(checkpoint)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    if is_hf_folder(checkpoint):
        api.upload_folder(repo_id=repo_id, folder_path=checkpoint)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            to_hf(checkpoint, tmp)
            api.upload_folder(repo_id=repo_id, folder_path=tmp)
    return str(url)
