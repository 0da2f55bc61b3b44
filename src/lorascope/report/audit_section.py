"""Audit section: an adapter (audited on the fly) or an audit JSON (`lorascope.audit/v1`).

Plots: the normalised singular-value spectrum of every layer (log scale, one line per layer,
styled by module type, highlighted on hover), heatmaps of utilisation and energy rank by block ×
module, and allocated vs suggested rank per layer.  Numbers come from the audit JSON embedded in
the page; definitions are the audit's (docs/metrics.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownFormatError
from ..order import natural_key, natural_sorted
from .base import Built, SectionKind
from .fields import Doc
from .html import Percent, esc, figure, table, text_list
from .inputs import REPORT_HINT
from .plot import MARGINS, MIN_FONT, MODULE_STYLE, compact, log_ticks
from .svg import (
    TITLE_FONT,
    Axes,
    Scale,
    Style,
    cells,
    colorbar,
    colour_range,
    document,
    legend_above,
    markers,
    nice_ticks,
    padded,
    text,
)

NO_LAYERS = '<p class="missing">No LoRA layers in this audit.</p>'
MAX_LINES = 1000  # spectra drawn (beyond, every k-th layer: page size and time stay bounded)
ANNOTATE_MAX = 150  # heatmap cells written on up to this many cells (beyond, the table has them)


def build(path: str, doc: Any) -> Built:
    if doc is None:  # an adapter: audit it with the defaults `lorascope audit` uses
        from ..audit import audit_adapter

        try:  # the dict `audit --json` writes (plain lists, ints, floats, strings: equal to its
            # JSON read back, without the 50 ms of writing and parsing 0.4 MB of text)
            doc = audit_adapter(path).to_dict()
        except UnknownFormatError as e:  # audit's message; its hint (--format) is not report's
            raise UnknownFormatError(e.message, path=e.path, hint=REPORT_HINT) from None
    d = Doc(doc, path)
    options = d.obj("options", optional=True)
    tau = ((options.nums("thresholds", optional=True) if options else None) or [0.9])[0]
    key = f"energy_rank@{tau:.12g}"
    # natural order (layers.2 before layers.10) in every plot and table; the JSON keeps the file's
    layers = sorted((_layer(x, key) for x in d.objs("layers")), key=lambda x: natural_key(x.name))
    summary = d.need("summary")
    facts = _facts(d, summary, layers, key)
    live = [x for x in layers if not x.dead and x.sv and x.sv[0] > 0]  # σ₁ = 0: nothing to draw
    body = [_spectra(live), _heatmaps(layers, tau), _ranks(layers, tau)] if layers else [NO_LAYERS]
    return Built(data=doc, facts=facts, body="".join(body), notes=text_list(d.raw("notes")))


@dataclass(frozen=True)
class _Layer:
    """The fields of one audit layer the plots and tables read."""

    name: str
    rank: int
    dead: bool
    type: str  # module type ("other" when the audit gives none)
    block: str | None
    utilisation: float
    stable_rank: float
    effective_rank: float | None
    sigma_max: float | None
    k: int  # energy rank at the audit's first threshold
    suggested: int
    sv: list[float] | None


def _layer(x: Doc, key: str) -> _Layer:
    """The fields the plots read, type-checked (the error names layers[i].field)."""
    return _Layer(
        name=x.text("name"),
        rank=x.integer("rank"),
        dead=bool(x.raw("dead", False)),
        type=x.text("module_type", optional=True) or "other",
        block=x.text("block", optional=True),
        utilisation=x.num("utilisation"),
        stable_rank=x.num("stable_rank"),
        effective_rank=x.num("effective_rank", optional=True),
        sigma_max=x.num("sigma_max", optional=True),
        k=x.integer(key),
        suggested=x.integer("suggested_rank"),
        sv=x.nums("singular_values", optional=True),
    )


def _facts(d: Doc, summary: Doc, layers: list[_Layer], key: str) -> list[tuple[str, Any]]:
    util = summary.obj("utilisation", optional=True)
    k = summary.obj(key, optional=True)
    sugg = d.obj("suggestions", optional=True)
    p90 = sugg.obj("p90", optional=True) if sugg else None
    source = d.obj("source", optional=True)
    red = p90.num("reduction", optional=True) if p90 else None  # a fraction: shown as the CLI's %
    return [
        ("format", source.text("format", optional=True) if source else None),
        ("layers", len(layers)),
        ("dead layers", sum(x.dead for x in layers)),
        ("allocated ranks", ", ".join(str(r) for r in sorted({x.rank for x in layers}))),
        ("parameters", summary.integer("params", optional=True)),
        ("utilisation (mean)", util.num("mean", optional=True) if util else None),
        (f"{key} (median)", k.num("median", optional=True) if k else None),
        ("suggested rank (p90)", p90.integer("rank", optional=True) if p90 else None),
        ("parameter reduction at p90", Percent(red) if red is not None else None),
    ]


def _spectra(live: list[_Layer]) -> str:
    with_sv = [x for x in live if x.sv]
    caption = (
        "Singular values of each layer's ΔW divided by its largest (log scale), one line per layer; "
        "line style and colour by module type; hover a line for its name; layers in natural order"
    )
    if not with_sv:
        return '<p class="missing">No singular values in this audit (written with --no-singular-values).</p>'
    stride = -(-len(with_sv) // MAX_LINES)  # ceil: every layer up to MAX_LINES layers
    if stride > 1:
        caption += f"; one layer in {stride} of {len(with_sv)} drawn (the table lists them all)"
    svg = _spectra_svg(with_sv[::stride], {x.type for x in with_sv})
    rows = [
        [
            x.name,
            x.type,
            x.rank,
            x.sigma_max,
            x.stable_rank,
            x.effective_rank,
            x.utilisation,
        ]
        for x in with_sv
    ]
    head = ["layer", "module type", "r", "σ₁", "stable rank", "effective rank", "utilisation"]
    return figure(svg, caption, table(head, rows, "Spectrum summary per layer", collapsed=True))


def _frame(width_in: float, height_in: float, margins: dict[str, float]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a plotting area in points, from figure fractions."""
    w, h = width_in * 72, height_in * 72
    return margins["left"] * w, (1 - margins["top"]) * h, margins["right"] * w, (1 - margins["bottom"]) * h


def _y_ticks(values: list[float]) -> tuple[Scale, list[tuple[float, str]]]:
    """A log scale with plot.log_ticks' ticks over the values, or a linear one where they span
    less than a factor of 10."""
    lo, hi = min(values), max(values)
    scale = log_ticks(lo, hi)
    if scale is None:
        lin = padded(lo, hi)
        return lin, [(t, compact(t)) for t in nice_ticks(lin, nbins=5)]
    return Scale(scale[0], scale[1], log=True), [(t, compact(t)) for t in scale[2]]


def _spectra_svg(drawn: list[_Layer], present: set[str]) -> str:
    """One line per layer (σᵢ/σ₁ against i, log y), each a group with the layer's name as its
    title (hover highlights it: the page's CSS), styled by module type; a legend of the types."""
    series = [[max(s / x.sv[0], 1e-12) for s in x.sv] for x in drawn if x.sv]  # log: zeros at 1e-12
    y, yticks = _y_ticks([v for ys in series for v in ys])
    x = padded(1, max(len(ys) for ys in series))
    ax = Axes(*_frame(8.0, 3.8, {**MARGINS, "left": 0.11, "top": 0.88}), x, y)
    ax.background()
    ax.xaxis([(t, f"{t:.0f}") for t in nice_ticks(x, integer=True)], "index i of σᵢ")
    ax.yaxis(yticks, "σᵢ / σ₁")
    for i, (layer, ys) in enumerate(zip(drawn, series, strict=True)):
        colour, line, _ = MODULE_STYLE.get(layer.type, MODULE_STYLE["other"])
        style = Style(colour, line, width=0.8, alpha=0.55)
        d = ax.path_data(range(1, len(ys) + 1), ys)
        title = f"{layer.name} (r={layer.rank}, {layer.type})"
        ax.parts.append(f'<g id="sv{i}"><title>{esc(title)}</title><path d="{d}" {style.stroke()}/></g>')
    ax.spines()
    types = [(t, Style(c, line)) for t, (c, line, _) in MODULE_STYLE.items() if t in present]
    legend_above(ax, types)
    return document(8.0, 3.8, "Normalised singular-value spectra", "spectra", [ax.close()])


def _ranks_svg(layers: list[_Layer], tau: float) -> str:
    """Allocated rank as a step line, the suggested rank (●) and k@τ (×) per layer, y from 0."""
    xs = list(range(len(layers)))
    series = [[x.rank for x in layers], [x.suggested for x in layers], [x.k for x in layers]]
    x = padded(0, len(layers) - 1)
    y = Scale(0, padded(min(min(v) for v in series), max(max(v) for v in series)).hi)
    ax = Axes(*_frame(8.0, 3.4, {**MARGINS, "top": 0.86}), x, y)
    ax.background()
    ax.xaxis(
        [(t, f"{t:.0f}") for t in nice_ticks(x, integer=True)],
        "layer # (natural order of the names; the table lists them)",
    )
    ax.yaxis([(t, f"{t:.0f}") for t in nice_ticks(y, integer=True)], "rank")
    allocated = Style("#555555", "-", width=1.2)
    mid = [v for i in xs[1:] for v in (i - 0.5, i - 0.5)]  # a step at each midpoint
    step_x = [xs[0], *mid, xs[-1]]
    step_y = [v for r in series[0] for v in (r, r)]
    ax.parts.append(f'<path d="{ax.path_data(step_x, step_y)}" {allocated.stroke()}/>')
    suggested, energy = Style("#0072B2", marker="o"), Style("#D55E00", marker="x")
    ax.parts.append(markers(ax, xs, series[1], suggested) + markers(ax, xs, series[2], energy))
    ax.spines()
    legend_above(ax, [("allocated r", allocated), ("suggested rank", suggested), (f"k@{tau:g}", energy)])
    return document(8.0, 3.4, "Allocated and suggested rank per layer", "ranks", [ax.close()])


def _block_key(block: str | None) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """Blocks in natural order (`down_blocks.2` before `down_blocks.10`), layers without one last."""
    return (1, ()) if block is None else (0, natural_key(block))


def _module(x: _Layer) -> str:
    block, name = x.block, x.name
    return name[len(block) + 1 :] if block and name.startswith(block + ".") else name.rsplit(".", 1)[-1]


# Heatmap geometry, in points.  Label widths are estimated (DejaVu Sans averages ≈ 0.6 em per
# character) instead of measured: measuring every label is what made constrained layout slow.
CHAR_PT = 0.6 * MIN_FONT
ROW_PT = 1.6 * MIN_FONT  # the room one horizontal label needs: its line height and a gap
MAX_LABEL = 56  # characters of a heatmap label; longer ones keep their end ("…" + tail)
MAX_HEIGHT = 16.0  # inches


def _label(text: str | None) -> str:
    text = "(no block)" if text is None else text
    return text if len(text) <= MAX_LABEL else "…" + text[-(MAX_LABEL - 1) :]


def _stride(n: int, room_pt: float, need_pt: float) -> int:
    """Label every k-th of n ticks so that each label has `need_pt` of the `room_pt` available."""
    return max(1, math.ceil(n * need_pt / max(room_pt, 1.0)))


@dataclass(frozen=True)
class _Grid:
    """The heatmap's layout: which names are rows and columns, and how their labels are drawn."""

    rows: list[str | None]
    cols: list[str | None]
    transposed: bool  # rows are modules, columns blocks (more modules than blocks)
    height: float  # inches
    left: float  # figure fractions
    bottom: float
    col_rotation: int
    col_stride: int
    row_stride: int
    annotate: bool


def _grid(blocks: Sequence[str | None], modules: Sequence[str | None]) -> _Grid:
    """Rows: the longer list (its labels read horizontally); columns: the shorter one, labels
    rotated upright when they do not fit side by side, and every k-th kept when even upright ones
    would touch."""
    transposed = len(modules) > len(blocks)
    rows, cols = (list(modules), list(blocks)) if transposed else (list(blocks), list(modules))
    row_w = max(len(_label(r)) for r in rows) * CHAR_PT
    col_w = max(len(_label(c)) for c in cols) * CHAR_PT
    left_in = min(3.4, (row_w + 12) / 72)
    panel_pt = (8.0 - left_in - 0.6) * 72 / 2 * 0.72  # two panels, each losing ≈ 28 % to its colorbar
    rotated = col_w + 6 > panel_pt / len(cols)
    col_stride = _stride(len(cols), panel_pt, ROW_PT if rotated else col_w + 6)
    bottom_in = ((col_w if rotated else MIN_FONT) + 14) / 72
    plot_in = min(max(len(rows) * ROW_PT / 72, 1.2), MAX_HEIGHT - bottom_in - 0.45)
    height = plot_in + bottom_in + 0.45
    row_stride = _stride(len(rows), plot_in * 72, ROW_PT)
    cell_w, cell_h = panel_pt / len(cols), plot_in * 72 / len(rows)
    annotate = len(rows) * len(cols) <= ANNOTATE_MAX and cell_w >= 5 * CHAR_PT and cell_h >= ROW_PT
    return _Grid(
        rows=rows,
        cols=cols,
        transposed=transposed,
        height=height,
        left=left_in / 8.0,
        bottom=bottom_in / height,
        col_rotation=90 if rotated else 0,
        col_stride=col_stride,
        row_stride=row_stride,
        annotate=annotate,
    )


def _heat_panel(g: _Grid, k: int, mat: list[list[float]], name: str, form: str) -> tuple[str, str]:
    """(panel, colour scale): panel k of the two side by side, as matplotlib lays out 1×2 subplots
    with wspace 0.15, each giving 10 % of its width to a colorbar 3 % apart, 80 % of its height
    at most and 20 times as tall as wide.  Only the first panel names its rows."""
    w, h = 8.0 * 72, g.height * 72
    left, right, top, bottom = g.left * w, 0.93 * w, 0.35 * 72, (1 - g.bottom) * h
    width = (right - left) / 2.15
    x0 = left + k * 1.15 * width
    ax = Axes(
        x0, top, x0 + 0.87 * width, bottom, Scale(-0.5, len(g.cols) - 0.5), Scale(len(g.rows) - 0.5, -0.5)
    )
    ax.background()
    cols = range(0, len(g.cols), g.col_stride)
    ax.xaxis([(j, _label(g.cols[j])) for j in cols], grid=False, rotate=g.col_rotation == 90)
    rows = range(0, len(g.rows), g.row_stride)
    ax.yaxis([(i, _label(g.rows[i]) if k == 0 else "") for i in rows], grid=False)
    ax.parts.append(cells(ax, mat, form if g.annotate else ""))
    ax.spines()
    ax.parts.append(text((ax.left + ax.right) / 2, top - 6, name, TITLE_FONT))
    bar_w, bar_h = 0.1 * width, 0.8 * (bottom - top)
    bar_w, bar_h = min(bar_w, bar_h / 20), min(bar_h, 20 * bar_w)
    bar_top = (top + bottom - bar_h) / 2
    return ax.close(), colorbar(x0 + 0.9 * width, bar_top, bar_w, bar_h, *colour_range(mat))


def _heatmaps(layers: list[_Layer], tau: float) -> str:
    blocks = sorted({x.block for x in layers}, key=_block_key)
    g = _grid(blocks, natural_sorted({_module(x) for x in layers}))
    row = {b: i for i, b in enumerate(g.rows)}
    col = {m: j for j, m in enumerate(g.cols)}
    util = [[math.nan] * len(g.cols) for _ in g.rows]
    kmat = [[math.nan] * len(g.cols) for _ in g.rows]
    for x in layers:
        r, c = (_module(x), x.block) if g.transposed else (x.block, _module(x))
        util[row[r]][col[c]], kmat[row[r]][col[c]] = x.utilisation, x.k
    panels = [(util, "utilisation", "{:.2f}"), (kmat, f"k@{tau:g}", "{:.0f}")]
    (heat0, bar0), (heat1, bar1) = (_heat_panel(g, k, *panel) for k, panel in enumerate(panels))
    # the colour scales last (as matplotlib draws them): a narrow first panel's scale labels reach
    # into the second panel, whose background must not hide them
    label = f"Utilisation and energy rank k@{tau:g} by block and module"
    svg = document(8.0, g.height, label, "heatmap", [heat0, heat1, bar0, bar1])
    rows = [[x.block, _module(x), x.rank, x.utilisation, x.k] for x in layers]
    where = "module (rows) and block (columns)" if g.transposed else "block (rows) and module (columns)"
    caption = (
        f"Utilisation (stable rank / r) and energy rank k@{tau:g} (smallest k holding {tau:g} of Σσ²), "
        f"by {where}, in natural order; blank cells: no such layer"
    )
    if g.col_stride > 1 or g.row_stride > 1:
        caption += "; every label shown where they fit, else every k-th (the table names every cell)"
    tab = table(
        ["block", "module", "r", "utilisation", f"k@{tau:g}"],
        rows,
        "Utilisation and energy rank",
        collapsed=True,
    )
    return figure(svg, caption, tab)


def _ranks(layers: list[_Layer], tau: float) -> str:
    svg = _ranks_svg(layers, tau)
    rows = [[i, x.name, x.rank, x.k, x.suggested] for i, x in enumerate(layers)]
    tab = table(
        ["#", "layer", "allocated r", f"k@{tau:g}", "suggested"], rows, "Ranks per layer", collapsed=True
    )
    caption = "Allocated rank (line), energy rank (×) and the suggested rank after rounding (●) per layer"
    return figure(svg, caption, tab)


SECTION = SectionKind(
    name="audit",
    title="Adapter audit",
    schemas=("lorascope.audit",),
    files=(),
    build=build,
)
