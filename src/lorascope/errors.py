"""Typed errors for everything a user can get wrong.

Each error subclasses `LorascopeError` *and* the builtin it resembles, so callers that catch
`ValueError` or `FileNotFoundError` keep working.  Every error carries the file (``path``) and,
where it applies, the tensor keys involved; `str(err)` is one line that names both.  The CLI maps
these to a one-line message and a non-zero exit code (see ``cli/_errors.py``).

The hint (what to do next) is given where the error is raised, when the raiser knows the command
(`hint=...`); a class's `hint` is only the default for errors raised without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class LorascopeError(Exception):
    """Base class.  ``exit_code`` is what the CLI returns for this error."""

    exit_code = 2
    hint: str | None = None

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        keys: Iterable[str] = (),
        hint: str | None = None,
    ):
        self.message = message
        self.path = str(path) if path is not None else None
        self.keys = tuple(keys)
        if hint is not None:
            self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.message}"


class InputNotFoundError(LorascopeError, FileNotFoundError):
    """A file or folder the user named (a config, a data file, a run log, a model) does not exist."""


class AdapterNotFoundError(InputNotFoundError):
    """The adapter path, or a file its format needs, does not exist."""

    hint = "check the path; an adapter is a directory with adapter_config.json or a .safetensors file"


class FormatError(LorascopeError, ValueError):
    """A file exists but its content is not what the format says (bad JSON, bad keys, bad shapes)."""


class ConfigError(FormatError):
    """A user's file (bench config, merge plan, check config, labels, data) is readable but a key in
    it is wrong: `str(err)` is "FILE: key KEY: problem" (or "FILE: problem" for the whole file)."""

    def __init__(
        self, problem: str, *, path: str | Path | None = None, key: str | None = None, hint: str | None = None
    ):
        self.key = key
        self.problem = problem
        super().__init__(f"key {key}: {problem}" if key else problem, path=path, hint=hint)


class UnknownFormatError(FormatError):
    """`detect` could not tell which format a file or directory is in (or it is ambiguous)."""

    hint = "pass --format to choose one explicitly"


class UnsupportedError(LorascopeError, NotImplementedError):
    """A valid input that lorascope deliberately does not handle (unsupported dtype, method, ...)."""


class MissingDependencyError(LorascopeError, ImportError):
    """An optional dependency (torch, pandas, ...) is needed for this input or call."""


class InvalidArgumentError(LorascopeError, ValueError):
    """A call or CLI argument is out of range or inconsistent."""


class WriteError(LorascopeError, OSError):
    """An output could not be written (no space left, no permission); nothing was left behind."""


def keys_preview(keys: Iterable[str], limit: int = 5) -> str:
    """'a, b, c (+12 more)': a short list for one-line messages."""
    keys = sorted(keys)
    head = ", ".join(keys[:limit])
    more = len(keys) - limit
    return f"{head} (+{more} more)" if more > 0 else head
