"""Audit section: an adapter (audited on the fly) or an audit JSON (`lorascope.audit/v1`).

Plots: the normalised singular-value spectrum of every layer (log scale, one line per layer,
styled by module type, highlighted on hover), heatmaps of utilisation and energy rank by block ×
module, and allocated vs suggested rank per layer.  Numbers come from the audit JSON embedded in
the page; definitions are the audit's (docs/metrics.md).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .base import Built, SectionKind
from .fields import Doc
from .html import figure, table, text_list
from .plot import MODULE_STYLE, log_axis, new_figure, safe, titled_groups, to_svg

NO_LAYERS = '<p class="missing">No LoRA layers in this audit.</p>'
MAX_LINES = 1000  # spectra drawn (beyond, every k-th layer: page size and time stay bounded)
ANNOTATE_MAX = 150  # heatmap cells written on up to this many cells (beyond, the table has them)


def build(path: str, doc: Any) -> Built:
    if doc is None:  # an adapter: audit it with the defaults `lorascope audit` uses
        from ..audit import audit_adapter

        doc = json.loads(audit_adapter(path).to_json())
    d = Doc(doc, path)
    options = d.obj("options", optional=True)
    tau = ((options.nums("thresholds", optional=True) if options else None) or [0.9])[0]
    key = f"energy_rank@{tau:.12g}"
    layers = [_layer(x, key) for x in d.objs("layers")]
    summary = d.need("summary")
    facts = _facts(d, summary, layers, key)
    live = [x for x in layers if not x["dead"] and x["sv"] and x["sv"][0] > 0]  # σ₁ = 0: nothing to draw
    body = [_spectra(live), _heatmaps(layers, tau), _ranks(layers, tau)] if layers else [NO_LAYERS]
    return Built(data=doc, facts=facts, body="".join(body), notes=text_list(d.raw("notes")))


def _layer(x: Doc, key: str) -> dict[str, Any]:
    """The fields the plots read, type-checked (the error names layers[i].field)."""
    return {
        "name": x.text("name"),
        "rank": x.integer("rank"),
        "dead": bool(x.raw("dead", False)),
        "type": x.text("module_type", optional=True) or "other",
        "block": x.text("block", optional=True),
        "utilisation": x.num("utilisation"),
        "stable_rank": x.num("stable_rank"),
        "effective_rank": x.num("effective_rank", optional=True),
        "sigma_max": x.num("sigma_max", optional=True),
        "k": x.integer(key),
        "suggested": x.integer("suggested_rank"),
        "sv": x.nums("singular_values", optional=True),
    }


def _facts(d: Doc, summary: Doc, layers: list[dict[str, Any]], key: str) -> list[tuple[str, Any]]:
    util = summary.obj("utilisation", optional=True)
    k = summary.obj(key, optional=True)
    sugg = d.obj("suggestions", optional=True)
    p90 = sugg.obj("p90", optional=True) if sugg else None
    source = d.obj("source", optional=True)
    return [
        ("format", source.text("format", optional=True) if source else None),
        ("layers", len(layers)),
        ("dead layers", sum(x["dead"] for x in layers)),
        ("allocated ranks", ", ".join(str(r) for r in sorted({x["rank"] for x in layers}))),
        ("parameters", summary.integer("params", optional=True)),
        ("utilisation (mean)", util.num("mean", optional=True) if util else None),
        (f"{key} (median)", k.num("median", optional=True) if k else None),
        ("suggested rank (p90)", p90.integer("rank", optional=True) if p90 else None),
        ("parameter reduction at p90", p90.num("reduction", optional=True) if p90 else None),
    ]


def _spectra(live: list[dict[str, Any]]) -> str:
    with_sv = [x for x in live if x["sv"]]
    caption = (
        "Singular values of each layer's ΔW divided by its largest (log scale), one line per layer; "
        "line style and colour by module type; hover a line for its name"
    )
    if not with_sv:
        return '<p class="missing">No singular values in this audit (written with --no-singular-values).</p>'
    stride = -(-len(with_sv) // MAX_LINES)  # ceil: every layer up to MAX_LINES layers
    if stride > 1:
        caption += f"; one layer in {stride} of {len(with_sv)} drawn (the table lists them all)"
    fig, ax = new_figure(8.0, 3.8, margins={"left": 0.11})
    titles = {}
    for i, x in enumerate(with_sv[::stride]):
        colour, style, _ = MODULE_STYLE.get(x["type"], MODULE_STYLE["other"])
        s1 = x["sv"][0]
        ys = [max(s / s1, 1e-12) for s in x["sv"]]  # log axis: exact zeros drawn at 1e-12
        gid = f"sv{i}"
        titles[gid] = f"{x['name']} (r={x['rank']}, {x['type']})"
        ax.plot(range(1, len(ys) + 1), ys, color=colour, ls=style, lw=0.8, alpha=0.55, gid=gid)
    for t, (colour, style, _) in MODULE_STYLE.items():
        if any(x["type"] == t for x in with_sv):
            ax.plot([], [], color=colour, ls=style, label=t)
    log_axis(ax)
    ax.set_xlabel("index i of σᵢ")
    ax.set_ylabel("σᵢ / σ₁")
    ax.legend(title="module type", loc="lower left")
    svg = titled_groups(to_svg(fig, "Normalised singular-value spectra", "spectra"), titles)
    rows = [
        [
            x["name"],
            x["type"],
            x["rank"],
            x["sigma_max"],
            x["stable_rank"],
            x["effective_rank"],
            x["utilisation"],
        ]
        for x in with_sv
    ]
    head = ["layer", "module type", "r", "σ₁", "stable rank", "effective rank", "utilisation"]
    return figure(svg, caption, table(head, rows, "Spectrum summary per layer", collapsed=True))


def _block_order(block: str | None) -> tuple[int, int, str]:
    if block is None:
        return (1, 0, "")
    m = re.search(r"(\d+)$", block)
    return (0, int(m.group(1)) if m else -1, block)


def _module(x: dict[str, Any]) -> str:
    block, name = x["block"], x["name"]
    return name[len(block) + 1 :] if block and name.startswith(block + ".") else name.rsplit(".", 1)[-1]


def _heatmaps(layers: list[dict[str, Any]], tau: float) -> str:
    blocks = sorted({x["block"] for x in layers}, key=_block_order)
    modules = sorted({_module(x) for x in layers})
    row = {b: i for i, b in enumerate(blocks)}
    col = {m: j for j, m in enumerate(modules)}
    util = [[math.nan] * len(modules) for _ in blocks]
    kmat = [[math.nan] * len(modules) for _ in blocks]
    for x in layers:
        i, j = row[x["block"]], col[_module(x)]
        util[i][j], kmat[i][j] = x["utilisation"], x["k"]
    height = min(2.0 + 0.16 * len(blocks), 12.0)
    labels = [safe(b) if b is not None else "(no block)" for b in blocks]
    # fixed margins sized from the longest labels (≈0.06 inch per character at these font sizes)
    left = min(0.4, (0.3 + 0.05 * max(map(len, labels))) / 8.0)
    bottom = min(0.5, (0.3 + 0.04 * max(map(len, modules))) / height)
    fig, axes = new_figure(
        8.0, height, 1, 2, margins={"left": left, "bottom": bottom, "top": 1 - 0.35 / height}
    )
    annotate = len(blocks) * len(modules) <= ANNOTATE_MAX
    for ax, mat, name, form in (
        (axes[0], util, "utilisation", "{:.2f}"),
        (axes[1], kmat, f"k@{tau:g}", "{:.0f}"),
    ):
        img = ax.imshow(mat, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(img, ax=ax, shrink=0.8)
        ax.set_title(name)
        ax.set_xticks(range(len(modules)), [safe(m) for m in modules], rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(blocks)), labels if ax is axes[0] else [""] * len(blocks), fontsize=6)
        ax.grid(False)
        if annotate:  # the numbers on the cells: readable without colour (the table has them all)
            lo, hi = img.get_clim()
            for i, r in enumerate(mat):
                for j, v in enumerate(r):
                    if not math.isnan(v):
                        dark = hi > lo and (v - lo) / (hi - lo) > 0.6  # viridis is light at the top
                        ax.text(
                            j,
                            i,
                            form.format(v),
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="k" if dark else "w",
                        )
    svg = to_svg(fig, f"Utilisation and energy rank k@{tau:g} by block and module", "heatmap")
    rows = [[x["block"], _module(x), x["rank"], x["utilisation"], x["k"]] for x in layers]
    caption = (
        f"Utilisation (stable rank / r) and energy rank k@{tau:g} (smallest k holding {tau:g} of Σσ²), "
        "by block (rows) and module (columns); blank cells: no such layer"
    )
    tab = table(
        ["block", "module", "r", "utilisation", f"k@{tau:g}"],
        rows,
        "Utilisation and energy rank",
        collapsed=True,
    )
    return figure(svg, caption, tab)


def _ranks(layers: list[dict[str, Any]], tau: float) -> str:
    fig, ax = new_figure(8.0, 3.2)
    xs = list(range(len(layers)))
    ax.step(xs, [x["rank"] for x in layers], where="mid", color="#555555", lw=1.2, label="allocated r")
    ax.plot(xs, [x["suggested"] for x in layers], "o", ms=3, color="#0072B2", label="suggested rank")
    ax.plot(xs, [x["k"] for x in layers], "x", ms=3, color="#D55E00", label=f"k@{tau:g}")
    ax.set_xlabel("layer (file order)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("rank")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=7)
    svg = to_svg(fig, "Allocated and suggested rank per layer", "ranks")
    rows = [[i, x["name"], x["rank"], x["k"], x["suggested"]] for i, x in enumerate(layers)]
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
