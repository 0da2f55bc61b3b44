"""Typed access to a JSON document read from a file, with one-line errors that name the key.

`Doc(data, path)` wraps a parsed object; `doc.num("loss")`, `doc.objs("layers")` return typed
values or raise `FormatError("FILE: layers[3].utilisation: expected a number, got the string
'x'")`.  Sections read every value they plot through it, so a hand-edited or truncated report is
refused with the key that is wrong instead of a traceback or a silently wrong plot.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

from ..errors import FormatError

_ABSENT = object()


def describe(value: Any) -> str:
    """'the string 'x'', 'a list', 'null': what a wrong value was, in a few words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, dict):
        return "an object"
    return "a list" if isinstance(value, list) else type(value).__name__


class Doc:
    """One JSON object of a document, with its position (`where`) for messages.  A required value
    (`optional=False`) is typed without None: a missing or null one raises."""

    def __init__(self, data: Any, path: str, where: str = ""):
        if not isinstance(data, dict):
            raise FormatError(
                f"{where or 'the document'}: expected an object, got {describe(data)}", path=path
            )
        self.data = data
        self.path = path
        self.where = where

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, expected: str, got: Any) -> FormatError:
        return FormatError(f"{self._key(key)}: expected {expected}, got {describe(got)}", path=self.path)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def _get(self, key: str, optional: bool) -> Any:
        value = self.data.get(key, _ABSENT)
        if value is _ABSENT:
            if optional:
                return None
            raise FormatError(f"{self._key(key)}: missing", path=self.path)
        return value

    @overload
    def num(self, key: str, optional: Literal[False] = False) -> float: ...
    @overload
    def num(self, key: str, optional: bool) -> float | None: ...
    def num(self, key: str, optional: bool = False) -> float | None:
        """A finite number, or None where optional and absent or null."""
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(key, "a number", value)
        return float(value)

    @overload
    def integer(self, key: str, optional: Literal[False] = False) -> int: ...
    @overload
    def integer(self, key: str, optional: bool) -> int | None: ...
    def integer(self, key: str, optional: bool = False) -> int | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer", value)
        return value

    @overload
    def text(self, key: str, optional: Literal[False] = False) -> str: ...
    @overload
    def text(self, key: str, optional: bool) -> str | None: ...
    def text(self, key: str, optional: bool = False) -> str | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def obj(self, key: str, optional: bool = False) -> Doc | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return Doc(value, self.path, self._key(key))

    def need(self, key: str) -> Doc:
        """A required object."""
        value = self._get(key, False)
        if not isinstance(value, dict):
            raise self.fail(key, "an object", value)
        return Doc(value, self.path, self._key(key))

    def objs(self, key: str, optional: bool = False) -> list[Doc]:
        """A list of objects (each wrapped, so its own errors say `key[i].field`)."""
        value = self._get(key, optional)
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.fail(key, "a list", value)
        return [Doc(v, self.path, f"{self._key(key)}[{i}]") for i, v in enumerate(value)]

    @overload
    def nums(self, key: str, optional: Literal[False] = False) -> list[float]: ...
    @overload
    def nums(self, key: str, optional: bool) -> list[float] | None: ...
    def nums(self, key: str, optional: bool = False) -> list[float] | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        bad = not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value
        )
        if bad:
            raise self.fail(key, "a list of finite numbers", value)
        return [float(v) for v in value]

    def first(self, *keys: str) -> str | None:
        """The first of several spellings present (other tools' key names), or None."""
        return next((k for k in keys if self.data.get(k) is not None), None)
