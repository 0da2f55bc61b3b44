"""Read a run log back: `read_log(path)` -> RunLog, `read_run(path, run_id)` -> one run's events.

Contract:
* The last line may be torn (the writer crashed mid-write): it is dropped and `torn_tail` is set.
  The last line counts as torn only when it does not end in a newline.
* Any other line that is not valid JSON or not a valid v1 record is an error naming the line
  number (`FormatError`, one line).  Errors are reported once, not re-counted per consumer
  (Gradience multiplied 3 bad lines into 15 issues).
* Unknown fields are ignored (kept in `Event.data`); unknown event names are skipped and counted.
* A file appended to by several runs keeps them apart by `run_id`; consumers pick one (the last by
  default) instead of mixing events of different runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterNotFoundError, FormatError
from .schema import EVENTS, Event, from_record, validate


class RunLogNotFoundError(AdapterNotFoundError):
    hint = "pass the run.jsonl written by LorascopeCallback or RunWriter"


@dataclass(frozen=True)
class RunLog:
    path: str
    events: tuple[Event, ...]
    torn_tail: bool = False
    n_unknown_events: int = 0

    @property
    def run_ids(self) -> tuple[str, ...]:
        """Run ids in order of first appearance."""
        seen: dict[str, None] = {}
        for e in self.events:
            seen.setdefault(e.run_id, None)
        return tuple(seen)

    def run(self, run_id: str | None = None) -> tuple[Event, ...]:
        """Events of one run (the last one in the file when run_id is None)."""
        ids = self.run_ids
        if not ids:
            return ()
        wanted = ids[-1] if run_id is None else run_id
        if wanted not in ids:
            raise FormatError(f"no run {wanted!r} in the log (runs: {', '.join(ids)})", path=self.path)
        return tuple(e for e in self.events if e.run_id == wanted)


def parse_lines(text: str, path: str = "<memory>") -> RunLog:
    lines = text.split("\n")
    # text ending in "\n" yields a final "" element: everything was terminated.
    torn_candidate = len(lines) - 1 if lines and lines[-1] != "" else None
    events: list[Event] = []
    torn = False
    unknown = 0
    for idx, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = idx + 1
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            if idx == torn_candidate:
                torn = True
                continue
            raise FormatError(
                f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})", path=path
            ) from None
        problem = validate(record)
        if problem:
            if idx == torn_candidate:
                torn = True
                continue
            raise FormatError(f"line {lineno}: {problem}", path=path)
        if record["event"] not in EVENTS:
            unknown += 1
            continue
        events.append(from_record(record, lineno))
    return RunLog(path=path, events=tuple(events), torn_tail=torn, n_unknown_events=unknown)


def read_log(path: str | Path) -> RunLog:
    p = Path(path)
    if not p.is_file():
        raise RunLogNotFoundError("run log not found", path=p)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text (byte {exc.start})", path=p) from None
    return parse_lines(text, str(p))


def read_run(path: str | Path, run_id: str | None = None) -> tuple[Event, ...]:
    return read_log(path).run(run_id)
