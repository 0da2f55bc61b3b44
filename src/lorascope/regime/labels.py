"""Labels and groups of runs: from a user's labels file (CSV with `run,label` columns, or a JSON /
YAML mapping run -> label) or from a dotted key of each run's own log (`meta.regime`).

A run is named in a labels file by its path as given, its file name, its file name without
`.jsonl`, or its run id.  A name that matches no run given, and a run that no name matches, are
errors (naming the file and the key), never a silently smaller fit.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, FormatError
from ..files import parse_text, read_text
from .logs import RunData


def read_labels(path: str | Path) -> dict[str, str]:
    """name -> label from a CSV (header `run,label`) or JSON/YAML mapping file."""
    text = read_text(path, "labels file")
    if Path(path).suffix.lower() == ".csv":
        return _csv_labels(text, path)
    data = parse_text(text, path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping run -> label at the top level", path=path)
    out = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value) == "":
            raise ConfigError(f"the label must be a non-empty string, got {value!r}", path=path, key=str(key))
        out[str(key)] = str(value)
    return out


def _csv_labels(text: str, path: str | Path) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["run", "label"]:
        raise ConfigError("a labels CSV starts with the header row `run,label`", path=path)
    out: dict[str, str] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"line {lineno}: expected `run,label`, got {','.join(row)!r}", path=path)
        name = row[0].strip()
        if name in out:
            raise ConfigError(f"line {lineno}: the run is labelled twice", path=path, key=name)
        out[name] = row[1].strip()
    return out


def _names(run: RunData) -> list[str]:
    p = Path(run.path)
    return [run.path, p.name, p.name.removesuffix(".jsonl"), p.stem, run.run_id]


def labels_from_file(runs: Sequence[RunData], path: str | Path, required: Sequence[bool]) -> list[str | None]:
    """Each run's label from the file: every name must match a run, every required run needs one."""
    table = read_labels(path)
    out: list[str | None] = [None] * len(runs)
    for name, label in table.items():
        hits = [i for i, r in enumerate(runs) if name in _names(r)]
        if not hits:
            raise ConfigError(
                "names no run given on the command line (a run is named by its path, file name, "
                "file name without .jsonl, or run id)",
                path=path,
                key=name,
            )
        for i in hits:
            if out[i] is not None and out[i] != label:
                raise ConfigError(f"gives {runs[i].path} a second label", path=path, key=name)
            out[i] = label
    for run, given, need in zip(runs, out, required, strict=True):
        if given is None and need:
            raise FormatError(f"the run has no label in {path}", path=run.path, hint="add a row for it")
    return out


def values_from_key(
    runs: Sequence[RunData], key: str, required: Sequence[bool], what: str, flag: str
) -> list[str | None]:
    """Each run's value of the dotted `key` (its label or group) as a string; a required run
    without one is an error naming it."""
    out: list[str | None] = []
    for run, need in zip(runs, required, strict=True):
        value = run.lookup(key)
        if value is None or isinstance(value, (dict, list)) or str(value) == "":
            if not need:
                out.append(None)
                continue
            raise FormatError(
                f"no {key} in the run's run_start/config events (the {what})",
                path=run.path,
                hint=f"log it in the run's meta, or pass {flag}",
            )
        out.append(str(value))
    return out
