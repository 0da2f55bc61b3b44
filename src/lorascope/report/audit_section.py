"""Audit section: an adapter (audited on the fly) or an audit JSON (`lorascope.audit/v1`).

Plots: the normalised singular-value spectrum of every layer (log scale, one line per layer,
styled by module type, highlighted on hover), heatmaps of utilisation and energy rank by block ×
module, and allocated vs suggested rank per layer.  Numbers come from the audit JSON embedded in
the page; definitions are the audit's (docs/metrics.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownFormatError
from ..order import natural_key, natural_sorted
from .base import Built, SectionKind
from .fields import Doc
from .html import Percent, figure, table, text_list
from .inputs import REPORT_HINT
from .plot import (
    MIN_FONT,
    MODULE_STYLE,
    integer_axis,
    legend_above,
    log_axis,
    new_figure,
    safe,
    titled_groups,
    to_svg,
)

NO_LAYERS = '<p class="missing">No LoRA layers in this audit.</p>'
MAX_LINES = 1000  # spectra drawn (beyond, every k-th layer: page size and time stay bounded)
ANNOTATE_MAX = 150  # heatmap cells written on up to this many cells (beyond, the table has them)


def build(path: str, doc: Any) -> Built:
    if doc is None:  # an adapter: audit it with the defaults `lorascope audit` uses
        from ..audit import audit_adapter

        try:
            doc = json.loads(audit_adapter(path).to_json())
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
    fig, ax = new_figure(8.0, 3.8, margins={"left": 0.11, "top": 0.88})
    titles = {}
    for i, x in enumerate(with_sv[::stride]):
        colour, style, _ = MODULE_STYLE.get(x.type, MODULE_STYLE["other"])
        sv = x.sv or []
        ys = [max(s / sv[0], 1e-12) for s in sv]  # log axis: exact zeros drawn at 1e-12
        gid = f"sv{i}"
        titles[gid] = f"{x.name} (r={x.rank}, {x.type})"
        ax.plot(range(1, len(ys) + 1), ys, color=colour, ls=style, lw=0.8, alpha=0.55, gid=gid)
    for t, (colour, style, _) in MODULE_STYLE.items():
        if any(x.type == t for x in with_sv):
            ax.plot([], [], color=colour, ls=style, label=t)
    log_axis(ax)
    integer_axis(ax, "x")
    ax.set_xlabel("index i of σᵢ")
    ax.set_ylabel("σᵢ / σ₁")
    legend_above(ax)
    svg = titled_groups(to_svg(fig, "Normalised singular-value spectra", "spectra"), titles)
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
    return safe(text if len(text) <= MAX_LABEL else "…" + text[-(MAX_LABEL - 1) :])


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


def _annotate(ax: Any, img: Any, mat: list[list[float]], form: str) -> None:
    """The numbers on the cells: readable without colour (the table has them all)."""
    lo, hi = img.get_clim()
    for i, r in enumerate(mat):
        for j, v in enumerate(r):
            if not math.isnan(v):
                dark = hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis is light at the top
                colour = "k" if dark else "w"
                ax.text(j, i, form.format(v), ha="center", va="center", fontsize=MIN_FONT, color=colour)


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
    margins = {"left": g.left, "right": 0.93, "bottom": g.bottom, "top": 1 - 0.35 / g.height, "wspace": 0.15}
    fig, axes = new_figure(8.0, g.height, 1, 2, margins=margins)
    for ax, mat, name, form in (
        (axes[0], util, "utilisation", "{:.2f}"),
        (axes[1], kmat, f"k@{tau:g}", "{:.0f}"),
    ):
        img = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(img, ax=ax, shrink=0.8, fraction=0.1, pad=0.03)
        ax.set_title(name)
        xs = range(0, len(g.cols), g.col_stride)
        ax.set_xticks(list(xs), [_label(g.cols[j]) for j in xs], rotation=g.col_rotation)
        ys = range(0, len(g.rows), g.row_stride)
        ax.set_yticks(list(ys), [_label(g.rows[i]) for i in ys] if ax is axes[0] else [])
        ax.grid(False)
        if g.annotate:
            _annotate(ax, img, mat, form)
    svg = to_svg(fig, f"Utilisation and energy rank k@{tau:g} by block and module", "heatmap")
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
    fig, ax = new_figure(8.0, 3.4, margins={"top": 0.86})
    xs = list(range(len(layers)))
    ax.step(xs, [x.rank for x in layers], where="mid", color="#555555", lw=1.2, label="allocated r")
    ax.plot(xs, [x.suggested for x in layers], "o", ms=3, color="#0072B2", label="suggested rank")
    ax.plot(xs, [x.k for x in layers], "x", ms=3, color="#D55E00", label=f"k@{tau:g}")
    ax.set_xlabel("layer # (natural order of the names; the table lists them)")
    integer_axis(ax, "x")
    integer_axis(ax, "y")
    ax.set_ylabel("rank")
    ax.set_ylim(bottom=0)
    legend_above(ax)
    svg = to_svg(fig, "Allocated and suggested rank per layer", "ranks")
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
