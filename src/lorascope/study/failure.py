"""Why an adapter could not be audited: `StudyFailure` (raised by the study itself: too large, not
cached, ...), the typed `Failure` line of failures.jsonl, and the mapping from any exception to
one of the failure kinds with a one-line reason.

Imported by both the worker and the Hugging Face resolver (hub.py), which the worker calls: this
module imports neither, so the two need no import inside a function to avoid a cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import (
    AdapterNotFoundError,
    FormatError,
    LorascopeError,
    UnknownFormatError,
    UnsupportedError,
)
from ..textsafe import clean

# A reason is kept whole (the audit prints it whole); only a pathological one (a hostile file
# name or header repeated into an error message) is cut, at this many characters, with "…".
MAX_REASON = 4096
KINDS = (
    "too large", "not found", "not cached", "download failed", "unknown format", "no LoRA layers",
    "unsupported", "unreadable", "out of memory", "worker crashed", "internal error",
)  # fmt: skip


class StudyFailure(LorascopeError):
    """A job that cannot be audited for a reason the study names itself (too large, not cached)."""

    def __init__(self, kind: str, message: str, *, path: str | None = None):
        self.kind = kind
        super().__init__(message, path=path)


@dataclass(frozen=True)
class Failure:
    """One line of failures.jsonl."""

    source: str
    kind: str  # one of KINDS
    reason: str  # one line, printable (textsafe.clean), at most MAX_REASON characters

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Failure:
        return cls(str(d["source"]), str(d["kind"]), str(d["reason"]))


def failure(source: str, e: BaseException) -> Failure:
    return Failure(source, failure_kind(e), one_line(e))


def crashed(source: str) -> Failure:
    """A worker process that died while auditing `source` (a signal, the OOM killer).  The reason
    is the same whichever executor saw it, so the executors' outputs are byte-identical."""
    return Failure(source, "worker crashed", "the worker process died while auditing it")


def one_line(e: BaseException | str) -> str:
    text = e if isinstance(e, str) else (str(e) or type(e).__name__)
    if isinstance(e, MemoryError):
        text = "out of memory"
    elif isinstance(e, OSError) and not isinstance(e, LorascopeError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = clean(text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def failure_kind(e: BaseException) -> str:
    if isinstance(e, StudyFailure):
        return e.kind
    if isinstance(e, (AdapterNotFoundError, FileNotFoundError)):
        return "not found"
    if isinstance(e, UnknownFormatError):
        return "unknown format"
    if isinstance(e, FormatError):
        return "no LoRA layers" if "no LoRA layers" in str(e) else "unreadable"
    if isinstance(e, UnsupportedError):
        return "unsupported"
    if isinstance(e, MemoryError):
        return "out of memory"
    if isinstance(e, (OSError, ValueError)):
        return "unreadable"
    return "internal error"
