"""gid.json and plan files: write atomically, read back checked, render as text.

The documents' fields are in `results.py`.  A layer is *starved* at rank r when its gid ≥ 4·r: a
rank-r LoRA can follow at most a quarter of the directions its full gradient spans (the RaLoRA rule
would give it ≥ 4 blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import files
from ..errors import InputNotFoundError
from ..textsafe import clean
from .results import SCHEMA, GidPlan, GidReport

STARVED_FACTOR = 4.0
REPORT_HINT = "make one with: lorascope gid MODEL_DIR --data FILE -o gid.json"
PLAN_HINT = "make one with: lorascope gid --report gid.json --plan ralora --plan-out plan.json"

__all__ = [
    "SCHEMA",
    "STARVED_FACTOR",
    "read_plan",
    "read_report",
    "render_peft",
    "render_plan",
    "render_report",
    "starved",
    "write_json",
]


def starved(gid: float, rank: int) -> bool:
    return gid >= STARVED_FACTOR * rank


def write_json(dest: str | Path, doc: GidReport | GidPlan | dict[str, Any]) -> Path:
    """Write a report or plan (or a plain JSON document) at `dest`, atomically and exclusively."""
    files.check_destination(dest)
    files.check_parent(dest)
    files.write_json(dest, doc.to_json() if isinstance(doc, (GidReport, GidPlan)) else doc)
    return Path(dest)


def _read(path: str | Path, what: str, hint: str) -> Any:
    try:
        return files.read_json(path, what)
    except InputNotFoundError as e:
        raise InputNotFoundError(e.message, path=path, hint=hint) from None


def read_report(path: str | Path) -> GidReport:
    """A gid.json, every field checked (one ConfigError naming the file and key)."""
    return GidReport.from_json(_read(path, "GID report", REPORT_HINT), path)


def read_plan(path: str | Path) -> GidPlan:
    """A plan file, every field checked (one ConfigError naming the file and key)."""
    return GidPlan.from_json(_read(path, "GID plan", PLAN_HINT), path)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _num(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def render_report(report: GidReport, limit: int | None = None) -> str:
    """A table: one row per layer, starved layers flagged; then a one-line summary."""
    r = report.rank
    rows = [("layer", "shape", "GID", "GID(σ²)", "stable", "k90", "importance", "")]
    for x in report.layers[:limit]:
        flag = f"STARVED (GID/r = {x.gid / r:.0f})" if starved(x.gid, r) else ""
        rows.append(
            (
                clean(x.name),
                "×".join(map(str, x.shape)),
                f"{x.gid:.1f}",
                _num(x.gid_energy, ".1f"),
                _num(x.stable_rank, ".2f"),
                _num(x.energy_rank_90, "d"),
                f"{x.importance:.3g}",
                flag,
            )
        )
    lines = _table(rows)
    gids = sorted(x.gid for x in report.layers)
    n_starved = sum(starved(g, r) for g in gids)
    lines.append(
        f"{len(gids)} layers; GID min {gids[0]:.1f}, median {gids[len(gids) // 2]:.1f}, max {gids[-1]:.1f}; "
        f"starved at r={r} (GID ≥ {STARVED_FACTOR:g}·r): {n_starved}"
    )
    return "\n".join(lines) + "\n"


def render_plan(plan: GidPlan) -> str:
    rows = [("layer", "r", "blocks", "equiv. rank", "GID", "note")]
    for name, x in plan.layers.items():
        rows.append(
            (
                clean(name),
                str(x.r),
                str(x.blocks),
                str(x.blocks * x.r),
                _num(x.gid, ".1f"),
                clean(x.note or ""),
            )
        )
    lines = _table(rows)
    params = sum(x.r * sum(x.shape) for x in plan.layers.values())
    lora = sum(plan.options.rank * sum(x.shape) for x in plan.layers.values())
    lines.append(
        f"{plan.method or 'plan'}: {params:,} trainable parameters vs {lora:,} for "
        f"LoRA r={plan.options.rank} ({params / lora:.3f}×)"
    )
    return "\n".join(lines) + "\n"


def render_peft(plan: GidPlan) -> str:
    """The PEFT plan as a ready-to-paste `LoraConfig(...)` ('' for other plans)."""
    return "" if plan.peft is None else plan.peft.to_python()
