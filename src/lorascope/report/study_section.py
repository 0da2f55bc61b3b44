"""Study section: a `lorascope study` output directory (`adapters.jsonl`, one line per adapter;
`study.json`, the tables), or one of those files.

Read defensively: per adapter, the utilisation is the first of `utilisation_mean`,
`utilization_mean`, `mean_utilisation` (a number, or an object with `mean`), the nominal rank the
first of `nominal_rank`, `rank`, `r`, `nominal_ranks` (a list or {rank: count}: its largest).  Lines
without both are counted and left out of the plots.  Plots: the utilisation histogram, box plots by
nominal-rank tier, and rank against utilisation.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .base import Built, SectionKind
from .fields import Doc
from .html import figure, table
from .inputs import finite_float, read_json
from .plot import integer_axis, log_axis, new_figure, to_svg

UTIL_KEYS = ("utilisation_mean", "utilization_mean", "mean_utilisation", "utilisation")
RANK_KEYS = ("nominal_rank", "rank", "r", "nominal_ranks")


def _refuse(name: str) -> None:
    raise ValueError(name)


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, record) of every non-blank line; strict JSON (no NaN), one-line errors."""
    rows = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(
                    (n, json.loads(line.decode("utf-8"), parse_constant=_refuse, parse_float=finite_float))
                )
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise FormatError(f"line {n}: not valid strict JSON", path=str(path)) from None
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(value, list):
        value = max((v for v in value if isinstance(v, (int, float))), default=None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rank(value: Any) -> float | None:
    if isinstance(value, dict):  # {rank: count}
        ranks = [int(k) for k in value if str(k).isdigit()]
        return float(max(ranks)) if ranks else None
    return _number(value)


def _point(row: Any, path: str, n: int) -> dict[str, Any] | None:
    d = Doc(row, path, f"line {n}")
    uk, rk = d.first(*UTIL_KEYS), d.first(*RANK_KEYS)
    util, rank = (_number(d.raw(uk)) if uk else None), (_rank(d.raw(rk)) if rk else None)
    if util is None or rank is None:
        return None
    return {"source": str(d.raw("source", d.raw("path", "?"))), "rank": rank, "utilisation": util}


def build(path: str, doc: Any) -> Built:
    p = Path(path)
    if doc is not None:  # study.json given alone
        rows, study = [], doc
    elif p.is_dir():
        rows = _read_jsonl(p / "adapters.jsonl") if (p / "adapters.jsonl").is_file() else []
        study = read_json(str(p / "study.json")) if (p / "study.json").is_file() else None
    else:  # adapters.jsonl given alone
        rows, study = _read_jsonl(p), None
    lines = str(p / "adapters.jsonl") if p.is_dir() else path  # the file a bad line is in
    points = [x for n, r in rows if (x := _point(r, lines, n)) is not None]
    data = {"adapters": [r for _, r in rows], "study": study}
    facts: list[tuple[str, Any]] = [("adapters", len(rows)), ("plotted", len(points))]
    if points:
        utils = [x["utilisation"] for x in points]
        facts += [
            ("utilisation (mean)", statistics.fmean(utils)),
            ("utilisation (median)", statistics.median(utils)),
        ]
    body = (
        _plots(points)
        if points
        else '<p class="missing">No adapter with a utilisation and a rank to plot.</p>'
    )
    notes = (
        [f"{len(rows) - len(points)} adapter line(s) without a utilisation or rank are not plotted"]
        if len(points) < len(rows)
        else []
    )
    return Built(data=data, facts=facts, body=body, notes=notes)


def _plots(points: list[dict[str, Any]]) -> str:
    tiers = sorted({x["rank"] for x in points})
    by_tier = {t: [x["utilisation"] for x in points if x["rank"] == t] for t in tiers}
    fig, (hist, box, scat) = new_figure(8.0, 3.0, 1, 3, margins={"wspace": 0.4, "bottom": 0.17})
    hist.hist([x["utilisation"] for x in points], bins=20, color="#0072B2", edgecolor="#000000", lw=0.5)
    hist.set_xlabel("utilisation (mean per adapter)")
    hist.set_ylabel("adapters")
    integer_axis(hist, "y")
    box.boxplot([by_tier[t] for t in tiers], tick_labels=[f"{t:g}" for t in tiers])
    box.set_xlabel("nominal rank")
    box.set_ylabel("utilisation")
    scat.plot(
        [x["rank"] for x in points], [x["utilisation"] for x in points], "o", ms=4, alpha=0.6, color="#D55E00"
    )
    log_axis(scat, "x", base=2)
    scat.set_xlabel("nominal rank (log₂)")
    svg = to_svg(fig, "Utilisation histogram, by rank tier, and against rank", "study")
    rows = [[f"{t:g}", len(v), statistics.fmean(v), statistics.median(v)] for t, v in by_tier.items()]
    tab = table(["nominal rank", "N", "mean utilisation", "median utilisation"], rows, "By nominal-rank tier")
    tab += table(
        ["adapter", "nominal rank", "utilisation"],
        [[x["source"], x["rank"], x["utilisation"]] for x in points],
        "Adapters (as plotted)",
        collapsed=True,
    )
    caption = (
        "Mean utilisation per adapter: histogram, box plots by nominal rank (tiers), and scatter against rank"
    )
    return figure(svg, caption, tab)


SECTION = SectionKind(
    name="study",
    title="Study",
    schemas=("lorascope.study",),
    files=("study.json", "adapters.jsonl"),
    build=build,
)
