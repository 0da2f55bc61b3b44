"""Plots as inline SVG, drawn with matplotlib (object API only: no pyplot, no global figure state).

Why matplotlib and SVG: the page must open offline, print, and stay small.  An SVG is text inside
the HTML (no script, no network, no canvas to size), scales to any window width, prints as
vectors, and matplotlib draws every chart the report needs (log axes, heatmaps, box plots) with
one well-kept dependency.  Text stays text (`svg.fonttype = none`: a few bytes per label instead of
glyph outlines); the output is deterministic (fixed hash salt, no date).

Readable without colour: every series also differs by marker or line style (the STYLE tables), and
every figure has a table of its numbers under it.  Colours are the Okabe–Ito palette (distinct
under the common colour-vision deficiencies).
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

from ..errors import MissingDependencyError
from ..textsafe import clean
from .html import esc

# Okabe & Ito (2008), "Color Universal Design"
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
# module type -> (colour, line style, marker)
MODULE_STYLE = {
    "attention": ("#0072B2", "-", "o"),
    "mlp": ("#D55E00", "--", "s"),
    "other": ("#009E73", ":", "^"),
}
# merge verdict -> (colour, marker); the worst verdicts get the heaviest markers
VERDICT_STYLE = {
    "SAFE": ("#009E73", "o"),
    "REDUNDANT": ("#0072B2", "s"),
    "IMBALANCED": ("#E69F00", "^"),
    "CONFLICTING": ("#D55E00", "X"),
}
SEVERITY_STYLE = {"info": ("#56B4E9", ":"), "warning": ("#E69F00", "--"), "error": ("#D55E00", "-")}

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "lorascope",
    "font.size": 9,
    "font.family": "sans-serif",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def safe(text: object) -> str:
    """Text from a file, made safe for a matplotlib label: control characters shown as escapes,
    `$` kept literal (matplotlib would parse $…$ as mathtext)."""
    return clean(text).replace("$", r"\$")


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "lorascope report draws its plots with matplotlib, which is not installed "
            "(pip install 'lorascope[report]')"
        ) from None
    return matplotlib


MARGINS = {"left": 0.08, "right": 0.98, "bottom": 0.13, "top": 0.92, "wspace": 0.25, "hspace": 0.3}


def new_figure(
    width: float = 8.0,
    height: float = 3.6,
    nrows: int = 1,
    ncols: int = 1,
    margins: dict[str, float] | None = None,
    **kw: Any,
) -> Any:
    """(figure, axes): a Figure not registered with pyplot (no global state, garbage-collected).

    Margins are fixed fractions (MARGINS, overridden per figure) rather than matplotlib's
    constrained layout, which measures every tick label several times: on a 224-layer adapter's
    heatmap that layout pass alone took longer than the whole audit."""
    mpl = _matplotlib()
    from matplotlib.figure import Figure

    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width, height))
        fig.subplots_adjust(**{**MARGINS, **(margins or {})})
        axes = fig.subplots(nrows, ncols, squeeze=kw.pop("squeeze", True), **kw)
    return fig, axes


def legend_patch(colour: str, hatch: str = "") -> Any:
    """A legend key drawn like a bar of that colour and hatch (an empty bar() is drawn in the
    default colour, whatever colour it was given)."""
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, edgecolor="#000000", hatch=hatch, lw=0.3)


_HEAD = re.compile(r"^.*?(?=<svg)", re.S)
_SIZE = re.compile(r'<svg([^>]*?) width="[^"]*" height="[^"]*"')
_META = re.compile(r"\s*<metadata>.*?</metadata>|\s*xmlns:(?:dc|cc|rdf)=\"[^\"]*\"", re.S)


def to_svg(fig: Any, label: str, css_class: str = "") -> str:
    """The figure as an inline <svg>: no XML prolog, no fixed size (CSS scales it), a <title>
    for screen readers, role=img."""
    mpl = _matplotlib()
    buf = io.StringIO()
    with mpl.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = _HEAD.sub("", buf.getvalue(), count=1)
    svg = _SIZE.sub(r"<svg\1", svg, count=1)
    svg = _META.sub("", svg, count=4)  # the RDF metadata block and its namespaces: bytes, no content
    svg = _unique_ids(svg)
    cls = f' class="{css_class}"' if css_class else ""
    svg = svg.replace("<svg", f'<svg role="img" aria-label="{esc(label)}"{cls}', 1)
    head_end = svg.index(">") + 1
    return svg[:head_end] + f"<title>{esc(label)}</title>" + svg[head_end:]


_ID = re.compile(r' id="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')
_AUTO = re.compile(r"^[\w.]+_\d+$")  # matplotlib's own group names: figure_1, line2d_7, …


def _unique_ids(svg: str) -> str:
    """Ids that stay unique when several SVGs share one HTML document.  matplotlib names every
    group (`figure_1`, `axes_1`, …, the same in every figure) and content-hashes its defs (clip
    paths, markers, images); the group names nobody references are dropped (bytes, and duplicate
    ids in the page), the referenced defs get a prefix from this SVG's own hash (deterministic).
    Ids set on purpose (gid=…, no `_N` suffix) are kept as they are."""
    referenced = {m.group(2) for m in _REF.finditer(svg)}
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:6] + "-"

    def rename_id(m: re.Match[str]) -> str:
        x = m.group(1)
        if x in referenced:
            return f' id="{prefix}{x}"'
        return "" if _AUTO.match(x) else m.group(0)

    svg = _ID.sub(rename_id, svg)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", svg)


def titled_groups(svg: str, titles: dict[str, str]) -> str:
    """Give the <g id=ID> groups matplotlib wrote for artists with gid=ID a <title> (a tooltip on
    hover, a name for screen readers)."""

    def add(m: re.Match[str]) -> str:
        gid = m.group(1)
        return f"{m.group(0)}<title>{esc(titles[gid])}</title>" if gid in titles else m.group(0)

    return re.sub(r'<g id="([^"]+)">', add, svg)


def log_axis(ax: Any, which: str = "y", base: float = 10) -> None:
    """A log axis with plain tick labels ('0.001', '100'): the default labels are mathtext, whose
    parser costs a quarter of a second on first use."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
