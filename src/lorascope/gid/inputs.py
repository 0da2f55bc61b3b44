"""What `lorascope gid MODEL_DIR --data FILE` reads before any torch work: the model folder and the data.

Model folder: a local Hugging Face model, i.e. a folder whose `config.json` names a `model_type`.
An adapter folder (adapter_config.json) or a folder without a model config is refused with one line
before anything is loaded (transformers' own errors for those are multi-line and name a tokenizer).

Data: a .jsonl file with one JSON object per line, or a .csv file with a header; each row has a
`text` string and, for --task cls, an integer `label` ≥ 0 (other keys or columns are ignored):

    {"text": "a gripping, well acted film", "label": 1}
    {"text": "two hours I will not get back", "label": 0}

Every problem is one error naming the file and line ("d.jsonl: key label on line 3: must be an
integer ≥ 0 (--task cls needs one per row), got 'x'").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FormatError, InputNotFoundError, InvalidArgumentError
from ..files import json_loads, read_text
from ..validate import short

DATA_HINT = (
    'give a .jsonl file of {"text": ..., "label": 0} lines or a .csv file with text,label columns '
    "(docs/gid.md has a sample)"
)
MODEL_HINT = "give a local Hugging Face model folder (config.json, weights, tokenizer files)"

__all__ = ["DATA_HINT", "check_model_dir", "read_rows"]


def check_model_dir(path: str | Path) -> str:
    """The `model_type` of the model folder `path`; one error when it is not one (module docstring)."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError("model folder not found", path=p, hint=MODEL_HINT)
    if not p.is_dir():
        raise InvalidArgumentError(f"{p} is not a model folder (it is a file)", hint=MODEL_HINT)
    if (p / "adapter_config.json").is_file():
        raise InvalidArgumentError(
            f"{p} is not a model folder (it holds adapter_config.json: an adapter; "
            "give the base model it was trained on)",
            hint=_base_model(p / "adapter_config.json"),
        )
    if not (p / "config.json").is_file():
        raise InvalidArgumentError(f"{p} is not a model folder (it has no config.json)", hint=MODEL_HINT)
    try:
        config = json_loads(read_text(p / "config.json", "config.json"), p / "config.json")
    except FormatError:
        config = None
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    if not isinstance(model_type, str) or not model_type:
        raise InvalidArgumentError(
            f"{p} is not a model folder (its config.json has no model_type)", hint=MODEL_HINT
        )
    return model_type


def _base_model(adapter_config: Path) -> str | None:
    """'its base model is X' from an adapter's config, when it names one."""
    try:
        config = json_loads(read_text(adapter_config), adapter_config)
    except (FormatError, InputNotFoundError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, Mapping) else None
    return f"its adapter_config.json names the base model {base}" if isinstance(base, str) and base else None


def _jsonl(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, json_loads(line, path, f"line {n} is not a JSON object ({{}})")


def _csv(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as e:  # e.g. a field over csv's size limit
        raise FormatError(f"not valid CSV ({e})", path=path) from None


def _label(row: Mapping[str, Any], n: int, path: Path, csv_file: bool) -> int:
    value = row.get("label")
    if csv_file and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    if not csv_file and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    problem = "is required" if value is None else f"must be an integer ≥ 0, got {short(value)}"
    raise ConfigError(f"{problem} (--task cls needs one per row)", path=path, key=f"label on line {n}")


def read_rows(path: str | Path, task: str) -> list[tuple[str, int]]:
    """(text, label) rows of a .jsonl or .csv file in file order; label 0 where the task needs none."""
    p = Path(path)
    if p.suffix not in (".jsonl", ".csv"):
        raise InvalidArgumentError("the data file must be .jsonl or .csv", path=p, hint=DATA_HINT)
    try:
        text = read_text(p, "calibration data file")
    except InputNotFoundError as e:
        raise InputNotFoundError(e.message, path=p, hint=DATA_HINT) from None
    out = []
    for n, row in _csv(text, p) if p.suffix == ".csv" else _jsonl(text, p):
        if not isinstance(row, Mapping):
            raise FormatError(
                f'line {n}: must be a JSON object with a "text" string, got {short(row)}', path=p
            )
        if not isinstance(row.get("text"), str):
            value = row.get("text")
            problem = "is required" if value is None else f"must be a string, got {short(value)}"
            raise ConfigError(problem, path=p, key=f"text on line {n}")
        out.append((row["text"], _label(row, n, p, p.suffix == ".csv") if task == "cls" else 0))
    if not out:
        raise FormatError("the data file has no rows", path=p, hint=DATA_HINT)
    return out
