"""What a study reads: SOURCE arguments turned into a deterministic list of jobs.

A SOURCE is, in this order of checks:
* an existing directory: searched recursively (sorted, hidden folders skipped; a symbolic link to
  a folder is taken when it is a PEFT adapter, never searched) for adapters: a folder holding
  `adapter_config.json` is one adapter (PEFT; its sub-folders are not searched further), and every
  other `*.safetensors` file is one adapter
  (kohya, diffusers, LyCORIS single files; a file that is no adapter becomes a failure, not a crash);
* an existing file ending in `.txt` or `.list` that is clearly a list: one SOURCE per line (blank
  lines and `#` comments skipped; relative paths are relative to the list file's folder; lists may
  name lists, each read once).  Clearly a list: every other line is an existing path or a
  repository id (`hf:...`, or ORG/NAME[@REVISION]).  Any other line makes the file an error
  (`ListError`, one line naming the file and the line): a note or a README is never taken for a
  list of paths.  A list passed as `lists=` (the CLI's `--list FILE`) is read whatever it holds:
  its missing paths become "not found" failures, as on the command line;
* any other existing file: one adapter;
* `hf:ORG/NAME[@REVISION]`, or `ORG/NAME[@REVISION]` that is not a local path: a Hugging Face
  repository, resolved in the worker through `huggingface_hub` (its cache first; a download, limited
  to the config and weights files and to `max_size`, only when online);
* anything else: a job whose failure says the path does not exist.

A job's `source` is the text the study records and resumes by: the path as given (joined to the
folder it was found in), or `hf:ORG/NAME[@REVISION]`.  Duplicates (the same repository, or paths
that resolve to the same file or folder, e.g. through a symbolic link) are dropped, first kept.
Deliberately left out: glob patterns (the shell expands them).  `.bin` files are not searched for
in folders; a PEFT folder whose weights are `adapter_model.bin`, or a `.bin` file given as a SOURCE,
is read by the audit through torch's weights-only loader (no code in the pickle is run), and its
bytes count towards `max_size`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputNotFoundError, InvalidArgumentError

LIST_SUFFIXES = (".txt", ".list")
PEFT_CONFIG = "adapter_config.json"
PEFT_BIN = "adapter_model.bin"  # read by the audit through torch's weights-only loader
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


class ListError(InvalidArgumentError):
    """A `.txt` / `.list` SOURCE that is not clearly a list of SOURCEs."""


def discover(sources: Iterable[str], exclude: Path | None = None, lists: Iterable[str] = ()) -> Iterator[Job]:
    """Jobs for `sources`, then for the list files `lists`, in order, without duplicates (see the
    module docstring).  `exclude`: a folder never searched (the study's own output folder)."""
    seen: set[str] = set()
    ex = exclude.resolve() if exclude else None
    read: set[Path] = set()
    for job in _chain(sources, ex, read, lists):
        key = job.source if job.repo_id is not None else os.path.realpath(job.source)
        if key not in seen:
            seen.add(key)
            yield job


def _chain(
    sources: Iterable[str], exclude: Path | None, read: set[Path], lists: Iterable[str]
) -> Iterator[Job]:
    yield from _expand(sources, exclude, read, strict=True)
    for f in lists:
        yield from _expand_list(Path(f), exclude, read)


def _expand_list(path: Path, exclude: Path | None, read: set[Path], strict: bool = False) -> Iterator[Job]:
    if path.is_dir():
        raise InvalidArgumentError(
            "is a folder, not a list file",
            path=path,
            hint="give the folder as a SOURCE, or --list a text file",
        )
    if not path.is_file():
        raise InputNotFoundError("no such list file", path=path, hint="--list names a text file of SOURCEs")
    key = path.resolve()
    if key in read:
        return
    read.add(key)
    if strict:
        _check_clearly_a_list(path)
    yield from _expand(list(_list_entries(path)), exclude, read, strict=strict)


def _expand(sources: Iterable[str], exclude: Path | None, read: set[Path], strict: bool) -> Iterator[Job]:
    for text in sources:
        path = Path(text)
        if path.is_dir():
            yield from (Job(p) for p in _walk(path, exclude))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            yield from _expand_list(path, exclude, read, strict)
        elif path.exists() or path.is_symlink():
            yield Job(text)
        elif (m := _REPO.fullmatch(text)) is not None:
            repo, rev = m.group(1), m.group(2)
            yield Job(f"hf:{repo}" + (f"@{rev}" if rev else ""), repo_id=repo, revision=rev)
        else:
            yield Job(text)  # fails in the worker: no such file or directory


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, entry) of a list file: stripped, blank lines and `#` comments skipped."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if line and not line.startswith("#"):
                yield n, line


def _entry(base: Path, line: str) -> str:
    if line.startswith("hf:") or (_REPO.fullmatch(line) and not (base / line).exists()):
        return line
    return line if os.path.isabs(line) else str(base / line)


def _list_entries(path: Path) -> Iterator[str]:
    return (_entry(path.parent, line) for _, line in _lines(path))


def _check_clearly_a_list(path: Path) -> None:
    """Refuse a positional list file with a line that is neither an existing path nor a repo id."""
    for n, line in _lines(path):
        entry = _entry(path.parent, line)
        if not (_REPO.fullmatch(entry) or os.path.lexists(entry)):
            raise ListError(
                f"line {n} is neither an existing path nor a repository id (ORG/NAME), so the file "
                "is not read as a list of SOURCEs",
                path=path,
                hint="to study a list whose paths may be missing, pass it as --list FILE",
            )


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
    """Bytes a study reads for an adapter: a file's size, or a folder's config and weights files
    (`*.safetensors` and `adapter_model.bin`)."""
    if not path.is_dir():
        return path.stat().st_size
    names = [PEFT_CONFIG, PEFT_BIN, *sorted(p.name for p in path.glob("*.safetensors"))]
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
