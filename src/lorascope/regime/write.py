"""Publish `regime fit`'s output folder atomically: regime.json, regime.md, features.csv and the
model file appear together or not at all; an existing non-empty folder is refused."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgumentError
from ..files import atomic_dir, check_destination, check_parent
from ..jsontext import dumps
from .fit import FitReport
from .render import fit_markdown
from .report_json import MODEL_FILE, features_csv


def check_out_dir(out: str | Path) -> None:
    check_destination(out, directory=True)
    p = Path(out)
    if p.is_dir() and any(p.iterdir()):
        raise InvalidArgumentError("output folder exists and is not empty; choose a new path", path=out)
    check_parent(p)


def write_fit(report: FitReport, out: str | Path) -> None:
    check_out_dir(out)
    kept: dict[str, str | None] = {
        row.path: lab for row, lab in zip(report.table.kept, report.labels, strict=True)
    }
    kept.update(
        {row.path: lab for row, lab in zip(report.table.excluded, report.excluded_labels, strict=True)}
    )
    with atomic_dir(out) as tmp:
        (tmp / "regime.json").write_text(report.to_json() + "\n", encoding="utf-8")
        (tmp / "regime.md").write_text(fit_markdown(report), encoding="utf-8")
        (tmp / "features.csv").write_text(features_csv(report.table, kept), encoding="utf-8")
        (tmp / MODEL_FILE).write_text(dumps(report.model.to_dict()) + "\n", encoding="utf-8")
