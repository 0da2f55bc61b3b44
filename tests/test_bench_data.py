"""Bench task data from local files: CSV, TSV, JSONL and Parquet give the same split; bad columns and
labels are one-line errors naming the file (no torch)."""

from __future__ import annotations

import json

import pytest

from lorascope.bench.config import parse_config
from lorascope.bench.data import load_task_data
from lorascope.errors import AdapterNotFoundError, FormatError, InputNotFoundError, LorascopeError

ROWS = [{"text": f"review number {i}", "label": ["bad", "good", "meh"][i % 3]} for i in range(30)]


def task(path, **extra):
    doc = {"model": {"name": "minilm"}, "task": {"source": "file", "path": str(path), **extra}}
    return parse_config(doc, "cfg").task


def write(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in ROWS))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        pd = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        pd.DataFrame(ROWS).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_formats_give_the_same_split(tmp_path, fmt):
    data = load_task_data(task(write(tmp_path, fmt), test_fraction=0.2, split_seed=3))
    reference = load_task_data(task(write(tmp_path, "jsonl"), test_fraction=0.2, split_seed=3))
    assert data == reference
    assert data.label_names == ("bad", "good", "meh") and data.num_labels == 3
    assert len(data.test_texts) == 6 and len(data.train_texts) == 24
    assert not set(data.test_texts) & set(data.train_texts)
    by_text = {r["text"]: r["label"] for r in ROWS}
    assert all(
        data.label_names[y] == by_text[t] for t, y in zip(data.train_texts, data.train_targets, strict=True)
    )


def test_separate_test_file_and_limits(tmp_path):
    train = write(tmp_path, "jsonl")
    test = tmp_path / "test.csv"
    test.write_text("text,label\nfine film,good\nawful,bad\nso so,meh\n")
    data = load_task_data(task(train, test_path=str(test), max_train=10, max_eval=2))
    assert len(data.train_texts) == 10 and len(data.test_texts) == 2


def test_missing_column_names_file_and_columns(tmp_path):
    path = write(tmp_path, "csv")
    with pytest.raises(FormatError) as err:
        load_task_data(task(path, label_column="stars"))
    assert str(err.value) == (
        f"{path}: column 'stars' (task.label_column) does not exist; columns: text, label"
    )


def test_unseen_test_label_and_one_label(tmp_path):
    train = write(tmp_path, "jsonl")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"text": "x", "label": "great"}) + "\n")
    with pytest.raises(FormatError, match="held-out label 'great' never occurs in the training data"):
        load_task_data(task(train, test_path=str(test)))
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"t{i}", "label": 1}) + "\n" for i in range(10)))
    with pytest.raises(FormatError, match="at least two distinct labels"):
        load_task_data(task(one))


def test_bad_files(tmp_path):
    with pytest.raises(InputNotFoundError) as err:
        load_task_data(task(tmp_path / "nope.csv"))
    assert str(err.value) == f"{tmp_path / 'nope.csv'}: data file not found"
    assert not isinstance(err.value, AdapterNotFoundError)  # a data file, not an adapter
    assert err.value.hint == (
        "fix task.path / task.test_path in the bench config (relative paths start at its folder)"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{oops\n')
    with pytest.raises(FormatError, match="cannot read the data file"):
        load_task_data(task(bad))
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(LorascopeError, match="unknown data file type '.xlsx'"):
        load_task_data(task(odd))


def test_integer_labels_are_numbered_by_value(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": [10, 2, -1][i % 3]}) + "\n" for i in range(12))
    )
    assert load_task_data(task(path)).label_names == ("-1", "2", "10")
