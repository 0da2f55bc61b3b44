"""Read a run log back: `scan_log(path)` streams events, `read_log(path)` -> RunLog holds them all.

Contract:
* Records of `lorascope.telemetry/v1` and of Gradience's `gradience.vnext.telemetry/v1` are read
  (`telemetry.gradience` turns the latter into the former); a file may hold both.  Gradience's flat
  per-step study logs (no envelope: step, train_loss, weight_norm, grad_norm, ... at top level) are
  read as train_step + geometry (+ eval for val_loss) events of one run named after the file.
* The last line may be torn (the writer crashed mid-write): it is dropped and `torn_tail` is set.
  The last line counts as torn only when it does not end in a newline.
* Any other line that is not UTF-8, not valid JSON (nested too deeply and integers over Python's
  digit limit included) or not a valid record (a payload field of the wrong kind included: loss as
  a string, step as a list, metrics not an object) is an error naming the line (`FormatError`, one
  line).  A bad line is never skipped: a monitor that dropped lines could miss the NaN loss it is
  there to report.  Errors are reported once, not re-counted per consumer.
* Unknown fields are ignored (kept in `Event.data`); unknown event names are skipped and counted.
* A file appended to by several runs keeps them apart by `run_id`; consumers pick one (the last by
  default) instead of mixing events of different runs.
* `scan_log` reads one line at a time: memory does not grow with the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdapterNotFoundError, FormatError
from .gradience import GRADIENCE_SCHEMA, is_flat, translate, translate_flat
from .schema import EVENTS, SCHEMA, Event, envelope_problem, from_record, payload_problem

SCHEMAS_READ = (SCHEMA, GRADIENCE_SCHEMA)


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


class LogScan:
    """One pass over a log's lines: iterate it for the events; `torn_tail` and `n_unknown_events`
    are final once the iteration has ended."""

    def __init__(self, lines: Iterable[tuple[int, bytes | str]], path: str):
        self._lines = lines
        self.path = path
        self.torn_tail = False
        self.n_unknown_events = 0

    def __iter__(self) -> Iterator[Event]:
        offset = 0
        for lineno, raw in self._lines:
            terminated = raw.endswith(b"\n") if isinstance(raw, bytes) else raw.endswith("\n")
            try:
                events = self._parse(lineno, raw, offset)
            except FormatError:
                if terminated:
                    raise
                self.torn_tail = True  # only the last line lacks its newline: the writer crashed
                return
            offset += len(raw)
            yield from events

    def _parse(self, lineno: int, raw: bytes | str, offset: int) -> list[Event]:
        def fail(problem: str) -> FormatError:
            return FormatError(f"line {lineno}: {problem}", path=self.path)

        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise fail(f"not UTF-8 text (byte {offset + e.start})") from None
        else:
            text = raw
        if not text.strip():
            return []
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise fail(f"not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise fail("not valid JSON (nested too deeply to read)") from None
        except ValueError:  # an integer over Python's digit limit
            raise fail(
                f"not valid JSON (an integer with more than {sys.get_int_max_str_digits()} digits)"
            ) from None
        if is_flat(record):  # Gradience's flat per-step study logs: one run per file
            records, problem = translate_flat(record, Path(self.path).stem)
            if problem:
                raise fail(problem)
            return self._events(records, lineno, fail)
        problem = envelope_problem(record, SCHEMAS_READ)
        if problem:
            raise fail(problem)
        records = [record]
        if record["schema"] == GRADIENCE_SCHEMA:
            records, problem = translate(record)
            if problem:
                raise fail(problem)
            if not records:
                self.n_unknown_events += 1
        return self._events(records, lineno, fail)

    def _events(self, records: list[dict], lineno: int, fail) -> list[Event]:
        events = []
        for rec in records:
            problem = payload_problem(rec)  # translated records keep the checked envelope
            if problem:
                raise fail(problem)
            if rec["event"] in EVENTS:
                events.append(from_record(rec, lineno))
            else:
                self.n_unknown_events += 1
        return events


def parse_lines(text: str, path: str = "<memory>") -> RunLog:
    lines = text.split("\n")
    numbered = [(i + 1, line + "\n") for i, line in enumerate(lines[:-1])]
    if lines[-1]:
        numbered.append((len(lines), lines[-1]))  # no newline after it: may be torn
    scan = LogScan(numbered, path)
    events = tuple(scan)
    return RunLog(path=path, events=events, torn_tail=scan.torn_tail, n_unknown_events=scan.n_unknown_events)


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        yield from enumerate(fh, 1)


def scan_log(path: str | Path) -> LogScan:
    """A one-pass, constant-memory iterator over the log's events (see `LogScan`)."""
    p = Path(path)
    if not p.is_file():
        raise RunLogNotFoundError("run log not found", path=p)
    return LogScan(_numbered_lines(p), str(p))


def read_log(path: str | Path) -> RunLog:
    scan = scan_log(path)
    events = tuple(scan)
    return RunLog(
        path=scan.path, events=events, torn_tail=scan.torn_tail, n_unknown_events=scan.n_unknown_events
    )


def read_run(path: str | Path, run_id: str | None = None) -> tuple[Event, ...]:
    return read_log(path).run(run_id)
