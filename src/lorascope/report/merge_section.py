"""Merge-audit section: a `lorascope.merge_audit/v1` JSON (`lorascope merge-audit A B --json`).

One figure, three panels sharing the layer axis: subspace overlap (with its chance level and the
overlap thresholds), directional agreement (negative = the adapters pull the layer in opposite
directions; the conflict threshold marked) and norm imbalance (log scale, threshold marked).  Each
point is coloured and shaped by the layer's verdict; the table under it names every layer.
"""

from __future__ import annotations

from typing import Any

from .base import Built, SectionKind
from .fields import Doc
from .html import Raw, esc, figure, table
from .inputs import doc_in
from .plot import VERDICT_STYLE, log_axis, new_figure, to_svg


def _layer(x: Doc) -> dict[str, Any]:
    rec = x.obj("recommendation", optional=True)
    return {
        "name": x.text("name"),
        "verdict": x.text("verdict"),
        "overlap": x.num("overlap"),
        "chance": x.num("chance_overlap", optional=True),
        "excess": x.num("overlap_excess", optional=True),
        "agreement": x.num("agreement"),
        "conflict_share": x.num("conflict_share", optional=True),
        "imbalance": x.num("imbalance"),
        "method": rec.text("method", optional=True) if rec else None,
    }


def build(path: str, doc: Any) -> Built:
    doc = doc_in(path, doc, "merge_audit.json")
    d = Doc(doc, path)
    layers = [_layer(x) for x in d.objs("layers")]
    summary = d.need("summary")
    thresholds = d.obj("thresholds", optional=True)
    verdicts = summary.obj("verdicts", optional=True)
    names = [a.text("path", optional=True) for a in d.objs("adapters", optional=True)]
    facts: list[tuple[str, Any]] = [
        ("overall verdict", summary.text("overall", optional=True)),
        ("shared layers", summary.integer("n_shared", optional=True)),
        ("adapters", " + ".join(n or "?" for n in names) or None),
        ("weighted overlap excess", summary.num("weighted_overlap_excess", optional=True)),
        ("weighted agreement", summary.num("weighted_agreement", optional=True)),
    ]
    if verdicts:
        facts += [(f"{v} layers", verdicts.integer(v, optional=True)) for v in VERDICT_STYLE]
    if not layers:
        return Built(data=doc, facts=facts, body='<p class="missing">No shared layers.</p>')
    return Built(
        data=doc, facts=facts, body=_plot(layers, thresholds), notes=[str(n) for n in d.raw("notes", [])]
    )


def _hline(ax: Any, y: float | None, label: str) -> None:
    if y is not None:
        ax.axhline(y, color="#555555", ls="--", lw=0.8)
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7)


def _plot(layers: list[dict[str, Any]], thresholds: Doc | None) -> str:
    t = (lambda k: thresholds.num(k, optional=True)) if thresholds else (lambda k: None)
    fig, axes = new_figure(8.0, 6.4, 3, 1, margins={"hspace": 0.12, "bottom": 0.08, "top": 0.96}, sharex=True)
    xs = list(range(len(layers)))
    chance = [x["chance"] for x in layers]
    if all(c is not None for c in chance):
        axes[0].plot(xs, chance, color="#999999", lw=0.8, label="chance overlap")
    panels = (("overlap", "overlap"), ("agreement", "agreement"), ("imbalance", "imbalance (ratio)"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for verdict, (colour, marker) in VERDICT_STYLE.items():
            idx = [i for i, x in enumerate(layers) if x["verdict"] == verdict]
            if idx:
                ax.plot(
                    idx, [layers[i][key] for i in idx], marker, ms=4, color=colour, ls="none", label=verdict
                )
        ax.set_ylabel(label)
    high, low = t("overlap_high"), t("overlap_low")
    _hline(axes[0], high, "overlap_high")
    _hline(axes[1], t("agreement_conflict"), "agreement_conflict")
    _hline(axes[2], t("imbalance"), "imbalance")
    axes[1].axhline(0.0, color="#000000", lw=0.5)
    log_axis(axes[2])
    axes[2].set_xlabel("shared layer (file order of the first adapter)")
    axes[0].legend(loc="upper right", fontsize=7, ncols=3)
    svg = to_svg(fig, "Per-layer overlap, agreement and imbalance, by verdict", "merge")
    caption = (
        "Per shared layer: subspace overlap of the two updates (grey: its chance level), directional "
        "agreement (below 0: opposite directions) and norm imbalance; marker and colour = verdict"
        + (f"; overlap_low = {low:g}" if low is not None else "")
    )
    rows = [
        [
            i,
            x["name"],
            Raw(f'<span class="badge">{esc(x["verdict"])}</span>'),
            x["overlap"],
            x["excess"],
            x["agreement"],
            x["conflict_share"],
            x["imbalance"],
            x["method"],
        ]
        for i, x in enumerate(layers)
    ]
    head = [
        "#",
        "layer",
        "verdict",
        "overlap",
        "excess over chance",
        "agreement",
        "conflict share",
        "imbalance",
        "method",
    ]
    return figure(svg, caption, table(head, rows, "Per-layer merge audit", collapsed=len(rows) > 40))


SECTION = SectionKind(
    name="merge_audit",
    title="Merge audit",
    schemas=("lorascope.merge_audit",),
    files=("merge_audit.json",),
    build=build,
)
