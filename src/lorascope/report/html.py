"""HTML building blocks of the report page: escaping, number formatting, tables, figures.

Every string that came from a file (layer names, paths, alert messages) goes through `esc`:
non-printable characters become visible escapes (`textsafe.clean`), then `<`, `>`, `&` and quotes
become entities, so no input can add markup or script to the page.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..textsafe import clean

MISSING = "—"  # shown where a value is absent (null in the JSON)


def esc(text: object) -> str:
    return html.escape(clean(text), quote=True)


class Percent:
    """A fraction shown as a percentage, as the CLI prints it (0.875 → "87.5 %")."""

    __slots__ = ("value",)

    def __init__(self, value: float | None):
        self.value = value

    def __str__(self) -> str:
        return MISSING if self.value is None else f"{100 * self.value:.1f} %"


def fmt(x: Any) -> str:
    """A number as the tables show it: integers exact (also when the JSON wrote 110592.0), other
    floats to 4 significant digits, `Percent` as a percentage."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, Percent):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return esc(repr(x))
        if x.is_integer() and abs(x) < 1e15:
            return str(int(x))
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return esc(x)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str, *, collapsed: bool = False
) -> str:
    """A data table; cells are formatted with `fmt` (already-built HTML is passed as `Raw`).  A
    collapsed table sits in a <details> that the page opens before printing."""
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = []
    for row in rows:
        cells = [c.html if isinstance(c, Raw) else fmt(c) for c in row]
        kinds = [
            "num" if isinstance(c, (int, float, Percent)) and not isinstance(c, bool) else "" for c in row
        ]
        tds = "".join(
            f'<td class="{k}">{c}</td>' if k else f"<td>{c}</td>" for c, k in zip(cells, kinds, strict=True)
        )
        body.append(f"<tr>{tds}</tr>")
    n = len(body)
    out = (
        f'<div class="tablewrap"><table><caption>{esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )
    if collapsed:
        return f"<details><summary>Table: {esc(caption)} ({n} rows)</summary>{out}</details>"
    return out


class Raw:
    """Pre-built HTML for a table cell (a verdict badge, a link)."""

    __slots__ = ("html",)

    def __init__(self, markup: str):
        self.html = markup


def figure(svg: str, caption: str, table_html: str = "") -> str:
    """A plot, its caption, and the table of the numbers it shows right under it."""
    return (
        f'<figure class="plot"><div class="svgwrap">{svg}</div>'
        f"<figcaption>{esc(caption)}</figcaption>{table_html}</figure>"
    )


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A definition list of headline facts."""
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{fmt(v)}</dd></div>" for k, v in pairs)
    return f'<dl class="facts">{items}</dl>'


def text_list(value: Any) -> list[str]:
    """A JSON list of notes as strings; anything else (absent, a string, an object) as nothing."""
    return [str(x) for x in value] if isinstance(value, list) else []


def notes(items: Iterable[str]) -> str:
    lis = "".join(f"<li>{esc(x)}</li>" for x in items)
    return f'<ul class="notes">{lis}</ul>' if lis else ""
