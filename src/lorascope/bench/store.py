"""Crash-safe stages: a stage's folder exists iff the stage finished.

`StageStore.run(name, fn, kind)` returns the stage's record (a `kind` instance).  A finished stage (its
folder holds stage.json) is never run again: its record is read back with `kind.from_dict`.
Otherwise `fn(work)` runs in `.NAME.partial/`, its record's `to_dict()` is written there as
stage.json, and the folder is renamed to NAME in one `os.replace` (atomic on one file system), so
`kill -9` at any moment leaves either a finished stage or a partial folder that the next run removes
and redoes.  Top-level files (bench.json, ...) are written with `files.write_text(..., replace=True)`:
a resumed run replaces them whole.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import FormatError
from ..files import read_json, write_json

RECORD = "stage.json"


class Record(Protocol):
    @classmethod
    def from_dict(cls, doc: Any) -> Any: ...

    def to_dict(self) -> Any: ...


R = TypeVar("R", bound=Record)


class StageStore:
    def __init__(self, root: Path):
        self.root = root
        self.ran: list[str] = []  # stages run (not read back) by this process

    def done(self, name: str) -> bool:
        return (self.root / name / RECORD).is_file()

    def record(self, name: str, kind: type[R]) -> R:
        path = self.root / name / RECORD
        try:
            return kind.from_dict(read_json(path))
        except (KeyError, TypeError, AttributeError):  # edited or from another version: not ours
            raise FormatError(
                "not a stage record this bench wrote",
                path=path,
                hint=f"remove the folder {path.parent} and --resume: the stage runs again",
            ) from None

    def run(self, name: str, fn: Callable[[Path], R], kind: type[R]) -> R:
        final = self.root / name
        if self.done(name):
            return self.record(name, kind)
        if final.exists():  # only a crash between our rename steps could leave this; redo it
            shutil.rmtree(final)
        work = self.root / f".{name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        record = fn(work)
        write_json(work / RECORD, record.to_dict())
        os.replace(work, final)
        self.ran.append(name)
        return record

    def clean_partials(self) -> None:
        for p in self.root.glob(".*.partial"):
            shutil.rmtree(p, ignore_errors=True)
