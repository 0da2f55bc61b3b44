"""The bench's data: a fixed train / held-out split of (text, target) pairs, from the task section.

Contract: `load_task_data(task)` (the config's `TaskSection`) returns `TaskData`; the split
depends on the config only (its `split_seed`), never on the bench seed, so every seed and every
variant sees the same examples (the seed changes initialisation and batch order).  Classification
targets are label ids 0..n−1 (string labels are numbered in sorted order of the training set's
values); generation targets are answer strings.  Sources: the offline Rotten Tomatoes corpus, a
local CSV / JSONL / Parquet file (with an optional separate held-out file), or a `datasets` dataset
(local folder or cached name).

Every problem names the file and what to change: a missing file, a column that does not exist (the
columns that do are listed), an empty split, a held-out label never seen in training.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputNotFoundError, InvalidArgumentError, MissingDependencyError
from ..files import json_loads
from .config import TaskSection

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class TaskData:
    kind: str  # "classification" | "generation"
    label_names: tuple[str, ...]  # classification: index = label id; generation: ()
    train_texts: tuple[str, ...]
    train_targets: tuple[Any, ...]  # int label ids, or answer strings
    test_texts: tuple[str, ...]
    test_targets: tuple[Any, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputNotFoundError(
            "data file not found",
            path=path,
            hint="fix task.path / task.test_path in the bench config (relative paths start at its folder)",
        )
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidArgumentError(f"unknown data file type {suffix!r}; use {', '.join(SUFFIXES)}", path=path)
    try:
        if suffix in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".parquet":
            return _parquet(path)
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            rows = json_loads(text, path, "cannot read the data file: {}")
        else:
            rows = [
                json_loads(ln, path, "cannot read the data file: {}")
                for ln in text.splitlines()
                if ln.strip()
            ]
    except (UnicodeDecodeError, csv.Error) as e:
        raise FormatError(f"cannot read the data file: {e}", path=path) from None
    if not all(isinstance(r, dict) for r in rows):
        raise FormatError("every JSON row must be an object with the text and label columns", path=path)
    return rows


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pandas as pd
    except ImportError:
        raise MissingDependencyError("Parquet files need pandas and pyarrow", path=path) from None
    try:
        return pd.read_parquet(path).to_dict("records")
    except ImportError:
        raise MissingDependencyError("Parquet files need pyarrow: pip install pyarrow", path=path) from None


def _columns(rows: list[dict[str, Any]], path: str, text_col: str, label_col: str) -> tuple[list, list]:
    if not rows:
        raise FormatError("the data file has no rows", path=path)
    for key, col in (("task.text_column", text_col), ("task.label_column", label_col)):
        if col not in rows[0]:
            have = ", ".join(map(str, rows[0]))
            raise FormatError(f"column {col!r} ({key}) does not exist; columns: {have}", path=path)
    texts, targets = [], []
    for i, row in enumerate(rows):
        text, target = row.get(text_col), row.get(label_col)
        if not isinstance(text, str) or target is None or target == "":
            raise FormatError(
                f"row {i + 1}: empty or non-text {text_col!r} or empty {label_col!r}", path=path
            )
        texts.append(text)
        targets.append(target)
    return texts, targets


def _split(texts: list, targets: list, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(fraction * len(order)))
    if n_test >= len(order):
        raise InvalidArgumentError(f"{len(order)} rows are too few to hold out {fraction:.0%}; add rows")
    return order[n_test:], sorted(order[:n_test])  # train in shuffled order, held-out in file order


def _encode_labels(train: list, test: list, where: str) -> tuple[tuple[str, ...], list[int], list[int]]:
    def order(s: str) -> tuple[int, int, str]:  # integer labels by value (0, 1, ..., 10), then text
        return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)

    names = sorted({str(v) for v in train}, key=order)
    if len(names) < 2:
        raise FormatError("classification needs at least two distinct labels in training data", path=where)
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({str(v) for v in test} - set(index))
    if unseen:
        raise FormatError(f"held-out label {unseen[0]!r} never occurs in the training data", path=where)
    return tuple(names), [index[str(v)] for v in train], [index[str(v)] for v in test]


def _from_rows(cfg: TaskSection) -> tuple[list, list, list, list, str]:
    test_rows: list | None
    if cfg.source == "datasets":
        train_rows, test_rows, where = _datasets(cfg)
    else:
        assert cfg.path is not None  # parse_config refuses source 'file' without task.path
        where = cfg.path
        train_rows = _rows(Path(where))
        test_rows = _rows(Path(cfg.test_path)) if cfg.test_path else None
    tx, ty = _columns(train_rows, where, cfg.text_column, cfg.label_column)
    if test_rows is None:
        tr, te = _split(tx, ty, cfg.test_fraction, cfg.split_seed)
        return [tx[i] for i in tr], [ty[i] for i in tr], [tx[i] for i in te], [ty[i] for i in te], where
    ex, ey = _columns(test_rows, cfg.test_path or where, cfg.text_column, cfg.label_column)
    return tx, ty, ex, ey, where


def _datasets(cfg: TaskSection) -> tuple[list, list, str]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError("task.source 'datasets' needs the datasets package") from None
    name = cfg.dataset
    assert name is not None  # parse_config refuses source 'datasets' without task.dataset
    try:
        ds = datasets.load_dataset(name, cfg.dataset_config)
    except Exception as e:  # offline miss, bad name: one line
        raise InvalidArgumentError(f"task.dataset {name!r} does not load offline: {e}") from None
    for key in ("train_split", "test_split"):
        if getattr(cfg, key) not in ds:
            raise InvalidArgumentError(
                f"task.{key} {getattr(cfg, key)!r} is not a split of {name}; splits: {list(ds)}"
            )
    return list(ds[cfg.train_split]), list(ds[cfg.test_split]), name


def load_task_data(cfg: TaskSection) -> TaskData:
    """The task section (validated) → the split, truncated to max_train / max_eval examples."""
    if cfg.source == "rotten_tomatoes":
        from .rt import load_task

        s = load_task(cfg.rt_task, seed=cfg.split_seed)
        names: tuple[str, ...] = s.label_names
        tx, ex = list(s.train_texts), list(s.test_texts)
        ty: list[Any] = list(s.train_labels)
        ey: list[Any] = list(s.test_labels)
    else:
        tx, ty, ex, ey, where = _from_rows(cfg)
        if cfg.kind == "classification":
            names, ty, ey = _encode_labels(ty, ey, where)
        else:
            names, ty, ey = (), [str(v) for v in ty], [str(v) for v in ey]
    if cfg.max_train:
        tx, ty = tx[: cfg.max_train], ty[: cfg.max_train]
    if cfg.max_eval and cfg.max_eval < len(ex):  # a seeded subset, in the held-out order
        keep = sorted(random.Random(cfg.split_seed + 1).sample(range(len(ex)), cfg.max_eval))
        ex, ey = [ex[i] for i in keep], [ey[i] for i in keep]
    return TaskData(cfg.kind, names, tuple(tx), tuple(ty), tuple(ex), tuple(ey))
