"""Hugging Face repositories as study sources, through `huggingface_hub` (imported only here).

`resolve_repo(repo_id, revision, max_size, cache_dir)` returns the local folder or file to audit:
1. the cache first (`snapshot_download(local_files_only=True)`): works offline for cached repos;
2. otherwise, unless the Hub is offline (HF_HUB_OFFLINE), the repository's file list (with sizes)
   gives the files the download would fetch, limited to `ALLOW` (the adapter config and safetensors
   weights: no pickles, no tokenizers, no model cards); more than `max_size` bytes in all is a
   "too large" failure before anything is downloaded; then the download itself.
The folder is the adapter when it holds adapter_config.json, else its one .safetensors file; a
repository with several weights files and no PEFT config is refused (ambiguous).
"""

from __future__ import annotations

import os
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from .failure import StudyFailure

ALLOW = ["adapter_config.json", "*.safetensors"]


def resolve_repo(repo_id: str, revision: str | None, max_size: int | None, cache_dir: str | None) -> Path:
    try:
        import huggingface_hub as hf
    except ImportError:
        raise StudyFailure(
            "not cached", "Hugging Face repositories need huggingface_hub: pip install huggingface_hub"
        ) from None
    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir, "allow_patterns": ALLOW}
    source = f"hf:{repo_id}"
    try:
        folder = hf.snapshot_download(repo_id, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001  (any cache miss: not cached, partial, unknown revision)
        folder = _download(hf, repo_id, max_size, kwargs, source)
    return _adapter_in(Path(str(folder)), source)


def _download(hf, repo_id: str, max_size: int | None, kwargs: dict, source: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise StudyFailure(
            "not cached", "not in the Hugging Face cache and HF_HUB_OFFLINE is set", path=source
        )
    try:
        if max_size is not None:
            info = hf.HfApi().model_info(repo_id, revision=kwargs["revision"], files_metadata=True)
            total = sum(
                int(s.size or 0)
                for s in info.siblings or ()
                if any(fnmatch(s.rfilename, pattern) for pattern in ALLOW)
            )
            if total > max_size:
                raise StudyFailure("too large", f"{total} bytes > --max-size {max_size}", path=source)
        return str(hf.snapshot_download(repo_id, **kwargs))
    except StudyFailure:
        raise
    except Exception as e:  # noqa: BLE001  (network, auth, missing repo: one failure line)
        raise StudyFailure("download failed", f"{type(e).__name__}: {e}", path=source) from None


def _adapter_in(folder: Path, source: str) -> Path:
    if (folder / "adapter_config.json").is_file():
        return folder
    weights = sorted(folder.glob("*.safetensors"))
    if len(weights) == 1:
        return weights[0]
    why = (
        "no adapter_config.json and no .safetensors file"
        if not weights
        else (f"{len(weights)} .safetensors files and no adapter_config.json (ambiguous)")
    )
    raise StudyFailure("unknown format", why, path=source)
