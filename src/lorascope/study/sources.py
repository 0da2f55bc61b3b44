"""What a study reads: SOURCE arguments turned into a deterministic list of jobs.

A SOURCE is, in this order of checks:
* an existing directory: searched recursively (sorted, hidden folders skipped; a symbolic link to
  a folder is taken when it is a PEFT adapter, never searched) for adapters: a folder holding
  `adapter_config.json` is one adapter (PEFT; its sub-folders are not searched further), and every
  other `*.safetensors` file is one adapter
  (kohya, diffusers, LyCORIS single files; a file that is no adapter becomes a failure, not a crash);
* an existing file ending in `.txt` or `.list`: one SOURCE per line (blank lines and `#` comments
  skipped; relative paths are relative to the list file's folder; lists may name lists, each read
  once);
* any other existing file: one adapter;
* `hf:ORG/NAME[@REVISION]`, or `ORG/NAME[@REVISION]` that is not a local path: a Hugging Face
  repository, resolved in the worker through `huggingface_hub` (its cache first; a download, limited
  to the config and weights files and to `max_size`, only when online);
* anything else: a job whose failure says the path does not exist.

A job's `source` is the text the study records and resumes by: the path as given (joined to the
folder it was found in), or `hf:ORG/NAME[@REVISION]`.  Duplicates (the same repository, or paths
that resolve to the same file or folder, e.g. through a symbolic link) are dropped, first kept.
Deliberately left out: glob patterns (the shell expands them) and `.bin` pickles (never read).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".txt", ".list")
PEFT_CONFIG = "adapter_config.json"
# ORG/NAME as the Hub spells repository ids, optionally @revision (a branch, tag or commit)
_REPO = re.compile(r"(?:hf:(?://)?)?([A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@([\w./-]{1,200}))?")


@dataclass(frozen=True)
class Job:
    """One adapter to audit; small and picklable (it travels to worker processes and Ray tasks)."""

    source: str  # what the study records: a path as found, or hf:ORG/NAME[@REVISION]
    repo_id: str | None = None  # set for Hugging Face repositories
    revision: str | None = None
    max_size: int | None = None  # bytes of config + weights; larger adapters fail "too large"
    threads: int = 1  # BLAS / layer threads inside the worker
    hub_cache: str | None = None  # huggingface_hub cache folder (None: its default)


def discover(sources: Iterable[str], exclude: Path | None = None) -> Iterator[Job]:
    """Jobs for `sources` in order, without duplicates (see the module docstring).  `exclude`: a
    folder never searched (the study's own output folder)."""
    seen: set[str] = set()
    for job in _expand(sources, exclude.resolve() if exclude else None, set()):
        key = job.source if job.repo_id is not None else os.path.realpath(job.source)
        if key not in seen:
            seen.add(key)
            yield job


def _expand(sources: Iterable[str], exclude: Path | None, lists: set[Path]) -> Iterator[Job]:
    for text in sources:
        path = Path(text)
        if path.is_dir():
            yield from (Job(p) for p in _walk(path, exclude))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            key = path.resolve()
            if key not in lists:
                lists.add(key)
                yield from _expand(_list_entries(path), exclude, lists)
        elif path.exists() or path.is_symlink():
            yield Job(text)
        elif (m := _REPO.fullmatch(text)) is not None:
            repo, rev = m.group(1), m.group(2)
            yield Job(f"hf:{repo}" + (f"@{rev}" if rev else ""), repo_id=repo, revision=rev)
        else:
            yield Job(text)  # fails in the worker: no such file or directory


def _list_entries(path: Path) -> Iterator[str]:
    base = path.parent
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("hf:") or (_REPO.fullmatch(line) and not (base / line).exists()):
                yield line
            else:
                yield line if os.path.isabs(line) else str(base / line)


def _walk(root: Path, exclude: Path | None) -> Iterator[str]:
    """Adapters under `root`, sorted, as paths joined onto `root` as given."""
    for here, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _excluded(Path(here, d), exclude)]
        if PEFT_CONFIG in files:
            dirs[:] = []
            yield here
            continue
        for d in dirs:  # os.walk lists symbolic links to folders but never enters them
            if os.path.islink(os.path.join(here, d)) and os.path.isfile(os.path.join(here, d, PEFT_CONFIG)):
                yield os.path.join(here, d)
        for name in sorted(files):
            if name.endswith(".safetensors") and not name.startswith("."):
                yield os.path.join(here, name)


def _excluded(path: Path, exclude: Path | None) -> bool:
    return exclude is not None and path.resolve() == exclude


def adapter_bytes(path: Path) -> int:
    """Bytes a study reads for an adapter: a file's size, or a folder's config and weights files."""
    if not path.is_dir():
        return path.stat().st_size
    names = [PEFT_CONFIG, *sorted(p.name for p in path.glob("*.safetensors"))]
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def parse_size(text: str) -> int:
    """'500000', '512K', '20M', '2G', '1T' (powers of 1024; a trailing B or iB is allowed) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 500000, 512K, 20M, 2G)")
    value = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")
    if value < 1:
        raise ValueError(f"a size must be ≥ 1 byte, got {text!r}")
    return int(value)
