"""One way to check a file a user hands lorascope: field checks, and frozen typed sections.

Hand-written rather than pydantic on purpose: the merge plan and check configs are read by core
commands whose start-up is measured (pydantic's import alone costs more than a whole `lorascope
check`), and the checks below are all our files need.  Every problem is one `ConfigError` with one
wording, "FILE: key a.b: problem, got VALUE", whichever file it is.

* A check is `f(value) -> problem | None` (`integer`, `number`, `string`, `boolean`, `optional`,
  `list_of`, `mapping_of`, or any function of that shape).
* A section is a frozen dataclass whose fields are declared with `setting(default, check)` (a
  value) or `section(Cls)` (a nested section).  `build(Cls, mapping, path=...)` refuses unknown
  keys (naming the known ones), fills defaults, checks every value, builds nested sections, and
  freezes lists into tuples, so a built config cannot be changed by accident.
* `to_dict(section)` is the inverse: plain dicts and lists, for hashing and JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

Check = Callable[[Any], "str | None"]
T = TypeVar("T")
_CHECK = "lorascope.check"
_SECTION = "lorascope.section"


# --- checks --------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
        if ok:
            return None
        if lo is not None and hi is not None:
            return f"must be an integer in [{lo}, {hi}]"
        if hi is not None:
            return f"must be an integer ≤ {hi}"
        return f"must be an integer ≥ {lo}" if lo is not None else "must be an integer"

    return check


def number(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = _is_number(v) and (v > lo if open_lo else v >= lo) and v <= hi
        if ok:
            return None
        if math.isinf(lo) and math.isinf(hi):
            return "must be a finite number"
        return f"must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]"

    return check


def string(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v:
            return "must be a non-empty string"
        return None if not choices or v in choices else f"must be one of {', '.join(choices)}"

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def list_of(item: Check, *, what: str = "values", distinct: bool = False, min_len: int = 1) -> Check:
    """A list (or tuple) of at least `min_len` items each passing `item`."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, (list, tuple)) and len(v) >= min_len and all(item(x) is None for x in v)
        if ok and distinct:
            ok = len({repr(x) for x in v}) == len(v)
        if ok:
            return None
        size = "a non-empty list" if min_len == 1 else f"a list of ≥ {min_len}" if min_len else "a list"
        return f"must be {size} of {'distinct ' if distinct else ''}{what}"

    return check


def mapping_of(value: Check, *, what: str = "values") -> Check:
    """A mapping from strings to values passing `value`."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, Mapping) and all(isinstance(k, str) and value(x) is None for k, x in v.items())
        return None if ok else f"must be a mapping of names to {what}"

    return check


# --- sections ------------------------------------------------------------------------------------


def setting(default: Any = dataclasses.MISSING, check: Check | None = None) -> Any:
    """A section field: its default (absent: the key is required) and its check."""
    meta = {_CHECK: check}
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A nested section field, built from the sub-mapping of the same name (absent: all defaults)."""
    return dataclasses.field(default_factory=cls, metadata={_SECTION: cls})


def short(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters (an integer of thousands of digits is described)."""
    if _is_int(value) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def freeze(value: Any) -> Any:
    """Lists become tuples, recursively (mappings are copied)."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Mapping):
        return {k: freeze(v) for k, v in value.items()}
    return value


def build(cls: type[T], data: Any, *, path: str | Path | None, prefix: str = "") -> T:
    """The section `cls` from the mapping `data` read from `path` (module docstring)."""
    where = prefix.rstrip(".") or None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a mapping, got {short(data)}", path=path, key=where)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(fields)
        raise ConfigError(f"unknown key; known keys: {known}", path=path, key=f"{prefix}{unknown[0]}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if _SECTION in f.metadata:
            values[name] = build(f.metadata[_SECTION], data.get(name), path=path, prefix=f"{key}.")
            continue
        if name not in data:
            if f.default is dataclasses.MISSING:
                raise ConfigError("is required", path=path, key=key)
            continue  # the dataclass default
        value = data[name]
        check = f.metadata.get(_CHECK)
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{problem}, got {short(value)}", path=path, key=key)
        values[name] = freeze(value)
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A section as plain dicts and lists (tuples become lists), for JSON and hashing."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = [
    "Check",
    "boolean",
    "build",
    "freeze",
    "integer",
    "list_of",
    "mapping_of",
    "number",
    "optional",
    "section",
    "setting",
    "short",
    "string",
    "to_dict",
]
