"""Calibrate a Hugging Face model directory on a text file (what `lorascope gid MODEL --data` runs).

Data: a .jsonl file of {"text": ..., "label": int} objects or a .csv file with `text` (and, for
--task cls, `label`) columns.  --task cls loads AutoModelForSequenceClassification with as many
labels as the data has (its head is freshly initialised when the checkpoint has none: its gradient
still flows to every targeted layer); --task clm loads AutoModelForCausalLM and uses the next-token
loss with padding masked.  Batches are the first steps·batch rows in file order, truncated to
`max_len` tokens.  Everything runs on CUDA when available, else CPU.  transformers is imported on
first call only.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ..files import json_loads
from .calibration import CalibrationConfig, calibrate


def read_rows(path: str | Path, task: str) -> list[tuple[str, int]]:
    """(text, label) rows of a .jsonl or .csv file; label 0 where the task needs none."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError("no such data file", path=p)
    rows: list[Any]
    try:
        if p.suffix == ".jsonl":
            text = p.read_text(encoding="utf-8")
            rows = [
                json_loads(line, p, "cannot read the data file ({})")
                for line in text.splitlines()
                if line.strip()
            ]
        elif p.suffix == ".csv":
            with p.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            raise InvalidArgumentError("the data file must be .jsonl or .csv", path=p)
    except UnicodeDecodeError as e:
        raise InvalidArgumentError(f"cannot read the data file ({type(e).__name__})", path=p) from None
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InvalidArgumentError(f"row {i + 1} has no text field", path=p)
        label = 0
        if task == "cls":
            try:
                label = int(row["label"])
            except (KeyError, TypeError, ValueError):
                raise InvalidArgumentError(
                    f"row {i + 1} has no integer label (needed by --task cls)", path=p
                ) from None
        out.append((row["text"], label))
    if not out:
        raise InvalidArgumentError("the data file has no rows", path=p)
    return out


def _loss_fn(task: str):
    def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if task == "cls":
            return model(**batch).loss
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
        return model(**batch, labels=labels).loss

    return loss


def calibrate_model_dir(
    model_dir: str | Path,
    data: str | Path,
    task: str,
    *,
    targets: Sequence[str] | None = None,
    batch: int = 8,
    max_len: int = 128,
    config: CalibrationConfig | None = None,
) -> dict[str, Any]:
    """Load `model_dir` (offline), build batches from `data`, run `calibrate`; the gid.json report."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # "newly initialised head" is expected for --task cls
    logging.disable_progress_bar()

    if task not in ("cls", "clm"):
        raise InvalidArgumentError(f"--task must be cls or clm, got {task!r}")
    config = config or CalibrationConfig()
    rows = read_rows(data, task)[: config.steps * batch]
    if not Path(model_dir).is_dir():
        raise InvalidArgumentError("the model must be a local Hugging Face model directory", path=model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if task == "cls":
        n_labels = max(2, max(label for _, label in rows) + 1)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=n_labels)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    batches = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        enc = tok(
            [t for t, _ in part], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        item = {k: v.to(device) for k, v in enc.items()}
        if task == "cls":
            item["labels"] = torch.tensor([label for _, label in part], device=device)
        batches.append(item)
    if config.model_name is None:
        from dataclasses import replace

        config = replace(config, model_name=str(model_dir))
    report = calibrate(model, batches, _loss_fn(task), targets, config)
    report["calibration"].update(batch=batch, max_len=max_len, task=task, data=str(data))
    return report
