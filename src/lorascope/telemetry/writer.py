"""`RunWriter`: append-only JSONL writer for the run log.

Contract:
* Append, never truncate: opening an existing log adds a new run (new `run_id`) after the old ones
  (Gradience opened with "w" and lost earlier runs).
* One JSON object per line, written with a single `write` and flushed, so a crash can tear at most
  the last line (the reader tolerates that).
* Privacy: any string longer than `max_str_len` (256) anywhere in a payload becomes
  "[REDACTED len=N]" unless `allow_text=True`.  Redaction is by length only: short secrets pass;
  keep free text out of `notes` if it is sensitive.
* Multi-process training: only process 0 writes (others get a disabled writer), or with
  `per_rank=True` each process writes `<stem>.rank<N><suffix>`.  The process index defaults to the
  RANK environment variable that torchrun/accelerate set.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import InvalidArgumentError
from .schema import EVENTS, SCHEMA, SEVERITIES, encode_nonfinite, validate

MAX_STR_LEN = 256


def redact(value: Any, max_len: int = MAX_STR_LEN) -> Any:
    """Replace every string longer than max_len (recursively, values not keys) by a marker."""
    if isinstance(value, str):
        return value if len(value) <= max_len else f"[REDACTED len={len(value)}]"
    if isinstance(value, Mapping):
        return {k: redact(v, max_len) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, max_len) for v in value]
    return value


def process_index_from_env() -> int:
    for var in ("RANK", "LOCAL_RANK"):
        raw = os.environ.get(var)
        if raw and raw.strip().isdigit():
            return int(raw)
    return 0


def rank_path(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.rank{index}{path.suffix}")


class RunWriter:
    """Write one run's events.  Use as a context manager or call `close()`."""

    def __init__(
        self,
        path: str | Path,
        *,
        run_id: str | None = None,
        allow_text: bool = False,
        max_str_len: int = MAX_STR_LEN,
        process_index: int | None = None,
        per_rank: bool = False,
    ):
        if max_str_len < 1:
            raise InvalidArgumentError(f"max_str_len must be ≥ 1, got {max_str_len}")
        index = process_index_from_env() if process_index is None else process_index
        self.path = rank_path(Path(path), index) if per_rank else Path(path)
        self.enabled = per_rank or index == 0
        self.run_id = run_id or f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.allow_text = allow_text
        self.max_str_len = max_str_len
        self._fh: TextIO | None = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            if self._fh.tell() > 0:
                self._repair_torn_tail(self._fh)

    def _repair_torn_tail(self, out: TextIO) -> None:
        """If a previous run crashed mid-line, start on a fresh line so our first record parses."""
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                out.write("\n")
                out.flush()

    def write(self, event: str, step: int | None = None, **payload: Any) -> dict[str, Any] | None:
        """Append one event; returns the record as written, read back (None when this process does not
        write).  The record is validated as the reader will see it."""
        if event not in EVENTS:
            raise InvalidArgumentError(f"unknown telemetry event {event!r}; known: {', '.join(EVENTS)}")
        if not self.enabled or self._fh is None:
            return None
        record = {"schema": SCHEMA, "ts": time.time(), "run_id": self.run_id, "event": event, "step": step}
        body = payload if self.allow_text else redact(payload, self.max_str_len)
        record.update(encode_nonfinite(body))
        line = json.dumps(record, allow_nan=False, separators=(",", ":"), default=_jsonable)
        written = json.loads(line)  # what a reader will see: numpy scalars, enums, sets made JSON
        problem = validate(written)
        if problem:
            raise InvalidArgumentError(
                f"refusing to write an invalid {event} event: {problem}", path=self.path
            )
        self._fh.write(line + "\n")
        self._fh.flush()
        return written

    def alert(self, severity: str, code: str, message: str, step: int | None = None, **context: Any):
        if severity not in SEVERITIES:
            raise InvalidArgumentError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        return self.write("alert", step, severity=severity, code=code, message=message, context=context)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, paths and enums: the values Trainer configs are full of."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "value") and isinstance(obj.value, (str, int, float)):
        return obj.value  # Enum (e.g. OptimizerNames) -> "adamw_torch", not "OptimizerNames.ADAMW"
    if isinstance(obj, (set, frozenset)):
        return sorted(str(x) for x in obj)
    return str(obj)
