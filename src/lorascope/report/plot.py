"""Plots as inline SVG, drawn with matplotlib (object API only: no pyplot, no global figure state).
The audit's figures, drawn for every adapter, are written as SVG text instead (svg.py: the same
look and structure, without matplotlib's ≈ 2 s of import and drawing).

Why matplotlib and SVG: the page must open offline, print, and stay small.  An SVG is text inside
the HTML (no script, no network, no canvas to size), scales to any window width, prints as
vectors, and matplotlib draws every chart the report needs (log axes, heatmaps, box plots) with
one well-kept dependency.  Text stays text (`svg.fonttype = none`: a few bytes per label instead of
glyph outlines); the output is deterministic (fixed hash salt, no date).

Readable at any width: no text is drawn smaller than MIN_FONT points, and each SVG keeps a
minimum rendered width (`min-width`, the wrapper scrolls sideways in a narrow window) at which that
text is still at least MIN_PX CSS pixels high; tick labels are thinned or rotated so that no two
overlap, and legends sit outside the plotting area, where they cannot hide a point.
(tests/test_report_browser.py measures both in Chromium.)

Readable without colour: every series also differs by marker or line style (the STYLE tables), and
every figure has a table of its numbers under it.  Colours are the Okabe–Ito palette (distinct
under the common colour-vision deficiencies).
"""

from __future__ import annotations

import hashlib
import io
import math
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

MIN_FONT = 8.0  # points: the smallest text any figure draws
MIN_PX = 9.0  # CSS pixels: the smallest that text may render at (the SVG's min-width keeps it)
LEGEND = {"fontsize": MIN_FONT, "frameon": False, "borderaxespad": 0.2, "handletextpad": 0.4}

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "lorascope",
    "font.size": 9,
    "legend.fontsize": MIN_FONT,
    "xtick.labelsize": MIN_FONT,
    "ytick.labelsize": MIN_FONT,
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


def legend_above(ax: Any, handles: Any = None, labels: Any = None, ncols: int = 4, **kw: Any) -> Any:
    """A frameless legend in a row just above the axes (the figure's top margin must leave room):
    outside the plotting area, so it never covers a point."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(
        handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=ncols, **{**LEGEND, **kw}
    )


_HEAD = re.compile(r"^.*?(?=<svg)", re.S)
_SIZE = re.compile(r'<svg([^>]*?) width="[^"]*" height="[^"]*"')
_META = re.compile(r"\s*<metadata>.*?</metadata>|\s*xmlns:(?:dc|cc|rdf)=\"[^\"]*\"", re.S)
_FONTS = re.compile(r"font-family: 'DejaVu Sans'[^;\"]*")  # matplotlib's whole fallback list, per label


def min_width(width_in: float) -> int:
    """The narrowest rendering (CSS pixels) of a figure `width_in` inches wide at which MIN_FONT
    (user units = points) is still MIN_PX pixels, with 8 px to spare for rounding."""
    return math.ceil(width_in * 72 * MIN_PX / MIN_FONT) + 8


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
    svg = _FONTS.sub("font-family: 'DejaVu Sans', Verdana, sans-serif", svg)
    svg = _unique_ids(svg)
    cls = f' class="{css_class}"' if css_class else ""
    svg = svg.replace(
        "<svg",
        f'<svg role="img" aria-label="{esc(label)}"{cls} style="min-width:{min_width(fig.get_figwidth())}px"',
        1,
    )
    head_end = svg.index(">") + 1
    return svg[:head_end] + f"<title>{esc(label)}</title>" + svg[head_end:]


_ID = re.compile(r' id="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')
_AUTO = re.compile(r"^[\w.]+_\d+$")  # matplotlib's own group names: figure_1, line2d_7, …
# the groups kept as classes (for the page's CSS and the browser checks): an axes, an axis, its
# ticks, a legend
_CLASSES = {"axes": "axes", "matplotlib.axis": "axis", "xtick": "xtick", "ytick": "ytick", "legend": "legend"}


def _unique_ids(svg: str) -> str:
    """Ids that stay unique when several SVGs share one HTML document.  matplotlib names every
    group (`figure_1`, `axes_1`, …, the same in every figure) and content-hashes its defs (clip
    paths, markers, images); the group names nobody references are dropped (bytes, and duplicate
    ids in the page), the referenced defs get a prefix from this SVG's own hash (deterministic).
    Ids set on purpose (gid=…, no `_N` suffix) are kept as they are; the structural groups in
    _CLASSES become classes (`class="xtick"`)."""
    referenced = {m.group(2) for m in _REF.finditer(svg)}
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:6] + "-"

    def rename_id(m: re.Match[str]) -> str:
        x = m.group(1)
        if x in referenced:
            return f' id="{prefix}{x}"'
        if _AUTO.match(x):
            kind = _CLASSES.get(x.rpartition("_")[0])
            return f' class="{kind}"' if kind else ""
        return m.group(0)

    svg = _ID.sub(rename_id, svg)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", svg)


def compact(v: float) -> str:
    """A tick label: 110592 → '110.6k', 2.5e6 → '2.5M', 0.001 → '0.001' (as the CLI writes
    parameter counts, never '1.106e+05')."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= limit:
            return f"{v / limit:.4g}{suffix}"
    return f"{v:.4g}"


def percent(v: float) -> str:
    """A fraction as the CLI prints it: 0.875 → '87.5 %'."""
    return f"{100 * v:.1f} %"


def integer_axis(ax: Any, which: str = "x") -> None:
    """Ticks only at whole numbers (an index, a rank, a count), never at 2.5."""
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if which == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def log_axis(ax: Any, which: str = "y", base: float = 10, values: Any = None) -> None:
    """A log axis whose tick labels say where the data are, in plain text ('0.001', '100k'; the
    default labels are mathtext, whose parser costs a quarter of a second on first use).  Call it
    after plotting: from the data limits it picks the ticks.  Over less than one factor of `base`
    (an imbalance between 1 and 3, parameter counts within one decade) a log axis would carry one
    label or none, so the axis stays linear; over a few factors the 2× and 5× ticks are labelled
    too; beyond, the powers of `base` (every k-th when there are many).  `values`: the data range
    when the axes' own limits include more (a bar's foot at 0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator

    axis = ax.yaxis if which == "y" else ax.xaxis
    if values is not None:
        positive = [v for v in values if v is not None and v > 0]
        lo, hi = (min(positive), max(positive)) if positive else (math.nan, math.nan)
    else:
        lo, hi = ax.dataLim.intervaly if which == "y" else ax.dataLim.intervalx
    label = FuncFormatter(lambda v, _: compact(v))
    scale = log_ticks(lo, hi, base)
    if scale is None:
        axis.set_major_locator(MaxNLocator(nbins=5))
        axis.set_major_formatter(label)
        return
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)
    (ax.set_ylim if which == "y" else ax.set_xlim)(scale[0], scale[1])
    axis.set_major_locator(FixedLocator(scale[2]))
    axis.set_major_formatter(label)
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def log_ticks(lo: float, hi: float, base: float = 10) -> tuple[float, float, list[float]] | None:
    """(low limit, high limit, ticks) of a log axis over data from lo to hi, or None where the
    axis should stay linear (see log_axis: less than one factor of `base`, or no positive data)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi / lo < base:
        return None
    first, last = math.floor(math.log(lo, base)), math.ceil(math.log(hi, base))
    decades = [base**k for k in range(first, last + 1)]
    if math.log(hi / lo, base) <= 2.5 and base == 10:
        ticks = [d * m for d in decades for m in (1, 2, 5)]
    else:
        step = -(-len(decades) // 8)  # at most 8 labelled powers
        ticks = decades[::step]
    pad = (hi / lo) ** 0.04  # the points at the ends are not cut by the axes
    return lo / pad, hi * pad, [t for t in ticks if lo / pad <= t <= hi * pad]
