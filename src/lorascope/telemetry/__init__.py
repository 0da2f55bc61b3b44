"""Training telemetry: the run-log schema, its writer and reader, and (lazily) the HF callback.

`LorascopeCallback` lives in `telemetry.callback`, the only module here that imports torch or
transformers; it is resolved on first attribute access so `import lorascope.telemetry` stays light.
"""

from __future__ import annotations

from typing import Any

from .reader import RunLog, parse_lines, read_log, read_run
from .schema import EVENTS, SCHEMA, Event, as_float
from .writer import MAX_STR_LEN, RunWriter, redact

_LAZY = {"LorascopeCallback": "callback", "CallbackConfig": "callback"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVENTS",
    "MAX_STR_LEN",
    "SCHEMA",
    "CallbackConfig",
    "Event",
    "LorascopeCallback",
    "RunLog",
    "RunWriter",
    "as_float",
    "parse_lines",
    "read_log",
    "read_run",
    "redact",
]
