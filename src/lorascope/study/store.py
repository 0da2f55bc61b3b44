"""The study's folder: three append-only journals written as results arrive, and resume.

    adapters.jsonl   one JSON record per audited adapter (worker.reduce_report)
    layers.csv       one row per layer of those adapters (worker.LAYER_COLUMNS; floats as repr)
    failures.jsonl   one JSON line per adapter that could not be audited: source, kind, reason

An adapter's layer rows are written and flushed before its record, so a record on disk means its
rows are there.  A study killed at any point leaves at most a partial last line in each journal
and rows without a record; `Store(out, resume=True)` cuts the partial lines, drops the orphan rows
(copying layers.csv once, streamed), and reports every recorded source (audited or failed) as done.
Without `resume`, a folder that already holds a study is refused, as is any non-empty folder: a
study never mixes with, or overwrites, other files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import InvalidArgumentError
from ..files import atomic_path, replacing
from .worker import LAYER_COLUMNS, Outcome

ADAPTERS, LAYERS, FAILURES = "adapters.jsonl", "layers.csv", "failures.jsonl"
JOURNALS = (ADAPTERS, LAYERS, FAILURES)


class Store:
    def __init__(self, out: Path, *, resume: bool = False):
        self.out = out
        self.done: set[str] = set()
        self.n_ok = self.n_failed = 0
        if out.exists() and not out.is_dir():
            raise InvalidArgumentError("--out must be a folder", path=out)
        has_study = any((out / n).exists() for n in JOURNALS)
        if not resume and out.is_dir() and any(out.iterdir()):
            why = "holds a study; pass --resume to continue it" if has_study else "is not empty"
            raise InvalidArgumentError(f"output folder {why}, or choose a new --out", path=out)
        out.mkdir(parents=True, exist_ok=True)
        self.resumed = resume and has_study  # continues an earlier study's journals
        if self.resumed:
            self._repair()
        self._adapters = open(out / ADAPTERS, "a", encoding="utf-8")
        self._failures = open(out / FAILURES, "a", encoding="utf-8")
        new_layers = not (out / LAYERS).exists() or (out / LAYERS).stat().st_size == 0
        self._layers: IO[str] = open(out / LAYERS, "a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._layers, lineterminator="\n")
        if new_layers:
            self._csv.writerow(LAYER_COLUMNS)
            self._layers.flush()

    def add(self, outcome: Outcome) -> None:
        """Write one outcome (rows, then record; or a failure line) and flush."""
        if outcome.record is not None:
            self._csv.writerows(_csv_row(r) for r in outcome.rows)
            self._layers.flush()
            record = json.dumps(outcome.record.to_dict(), allow_nan=False, sort_keys=True)
            self._adapters.write(record + "\n")
            self._adapters.flush()
            self.n_ok += 1
        else:
            assert outcome.failure is not None  # an Outcome holds a record or a failure
            self._failures.write(
                json.dumps(outcome.failure.to_dict(), allow_nan=False, sort_keys=True) + "\n"
            )
            self._failures.flush()
            self.n_failed += 1
        self.done.add(outcome.source)

    def close(self) -> None:
        for f in (self._layers, self._adapters, self._failures):
            f.close()

    def discard(self) -> None:
        """After a study that audited nothing: remove this run's journals, and the folder if that
        leaves it empty, so that the same --out can be used again (journals of an earlier study,
        continued with --resume, are kept)."""
        if self.resumed:
            return
        for name in JOURNALS:
            (self.out / name).unlink(missing_ok=True)
        try:
            self.out.rmdir()
        except OSError:  # not empty: it held something before this study
            pass

    def _repair(self) -> None:
        ok = _cut_journal(self.out / ADAPTERS)
        failed = _cut_journal(self.out / FAILURES)
        self.n_ok, self.n_failed = len(ok), len(failed)
        self.done = ok | failed
        _filter_layers(self.out / LAYERS, ok)


def _csv_row(row: tuple[Any, ...]) -> list[Any]:
    return [repr(v) if isinstance(v, float) else v for v in row]  # repr: exact round trip


def _cut_journal(path: Path) -> set[str]:
    """Sources of the complete, parseable lines of a JSON-lines journal; the file is truncated
    after the last good line (a line cut by a kill, and anything after it, goes)."""
    if not path.exists():
        return set()
    sources, good_end = set(), 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                sources.add(json.loads(line)["source"])
            except (ValueError, KeyError, TypeError):
                break
            good_end = f.tell()
    if good_end != path.stat().st_size:
        os.truncate(path, good_end)
    return sources


def _filter_layers(path: Path, keep: set[str]) -> None:
    """Keep the header and the complete rows whose source has a record; rewrite atomically."""
    if not path.exists():
        return
    with replacing(path), atomic_path(path) as tmp:
        with (
            open(path, encoding="utf-8", newline="") as src,
            open(tmp, "w", encoding="utf-8", newline="") as dst,
        ):
            header = src.readline()
            dst.write(header if header.endswith("\n") else ",".join(LAYER_COLUMNS) + "\n")
            for line in _complete_lines(src):
                row = next(csv.reader([line]))
                if row and row[0] in keep:
                    dst.write(line)


def _complete_lines(f: IO[str]) -> Iterator[str]:
    """Lines ending in a newline; a quoted field may hold newlines, so a CSV record may span lines."""
    buf = ""
    for line in f:
        buf += line
        if buf.endswith("\n") and buf.count('"') % 2 == 0:
            yield buf
            buf = ""


def read_records(out: Path, name: str = ADAPTERS) -> Iterator[dict[str, Any]]:
    path = out / name
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                yield json.loads(line)


def read_layer_columns(out: Path, columns: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The named columns of layers.csv, row by row (strings)."""
    with open(out / LAYERS, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        idx = [header.index(c) for c in columns]
        for row in reader:
            yield tuple(row[i] for i in idx)
