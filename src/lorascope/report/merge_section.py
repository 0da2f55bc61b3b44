"""Merge-audit section: a `lorascope.merge_audit/v1` JSON (`lorascope merge-audit A B --json`).

One figure, four panels sharing the layer axis, each with the verdict thresholds that apply to it
(merge/verdict.py): subspace overlap above its chance level (`overlap_excess`, with overlap_low and
overlap_high), directional agreement (below 0: the adapters pull the layer in opposite directions),
the share of conflicting principal directions, and the norm imbalance (log scale when it spans more
than a factor of 10, else linear: a log axis over 1–3 would carry one tick label).  Each point is
coloured and shaped by the layer's verdict; the table under it names every layer and also gives
the raw overlap.  A JSON without `overlap_excess` is plotted with the raw overlap.
"""

from __future__ import annotations

from typing import Any

from ..order import natural_key
from .base import Built, SectionKind
from .fields import Doc
from .html import Raw, esc, figure, table, text_list
from .inputs import doc_in
from .plot import LEGEND, VERDICT_STYLE, integer_axis, log_axis, new_figure, to_svg


def _layer(x: Doc) -> dict[str, Any]:
    rec = x.obj("recommendation", optional=True)
    return {
        "name": x.text("name"),
        "verdict": x.text("verdict"),
        "overlap": x.num("overlap"),
        "chance": x.num("chance_overlap", optional=True),
        "excess": x.num("overlap_excess", optional=True),  # what the verdict thresholds apply to
        "agreement": x.num("agreement"),
        "conflict_share": x.num("conflict_share", optional=True),
        "imbalance": x.num("imbalance"),
        "method": rec.text("method", optional=True) if rec else None,
    }


def build(path: str, doc: Any) -> Built:
    doc = doc_in(path, doc, "merge_audit.json")
    d = Doc(doc, path)
    # natural order (layers.2 before layers.10) in the plot and the table; the JSON keeps the file's
    layers = sorted((_layer(x) for x in d.objs("layers")), key=lambda x: natural_key(x["name"]))
    for x in layers:
        if x["excess"] is None:
            x["excess"] = x["overlap"]
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
    return Built(data=doc, facts=facts, body=_plot(layers, thresholds), notes=text_list(d.raw("notes")))


# (layer key, axis label, threshold drawn on the panel)
PANELS = (
    ("excess", "overlap − chance", "overlap_high"),
    ("agreement", "agreement", "agreement_conflict"),
    ("conflict_share", "conflict share", "conflict_share"),
    ("imbalance", "imbalance (ratio)", "imbalance"),
)


def _hline(ax: Any, y: float | None, label: str) -> None:
    if y is not None:
        ax.axhline(y, color="#555555", ls="--", lw=0.8)
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom")


def _plot(layers: list[dict[str, Any]], thresholds: Doc | None) -> str:
    t = (lambda k: thresholds.num(k, optional=True)) if thresholds else (lambda k: None)
    margins = {"hspace": 0.12, "bottom": 0.07, "top": 0.93}
    fig, axes = new_figure(8.0, 7.6, len(PANELS), 1, margins=margins, sharex=True)
    for ax, (key, label, threshold) in zip(axes, PANELS, strict=True):
        for verdict, (colour, marker) in VERDICT_STYLE.items():
            idx = [i for i, x in enumerate(layers) if x["verdict"] == verdict and x[key] is not None]
            if idx:
                ys = [layers[i][key] for i in idx]
                ax.plot(
                    idx, ys, marker, ms=4, color=colour, ls="none", label=verdict if ax is axes[0] else None
                )
        ax.set_ylabel(label)
        _hline(ax, t(threshold), threshold)
    _hline(axes[0], t("overlap_low"), "overlap_low")
    axes[1].axhline(0.0, color="#000000", lw=0.5)
    log_axis(axes[3], values=[x["imbalance"] for x in layers] + [t("imbalance") or 1.0])
    integer_axis(axes[3], "x")
    axes[3].set_xlabel("shared layer # (natural order of the names; the table lists them)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncols=5, **LEGEND)
    svg = to_svg(fig, "Per-layer overlap, agreement, conflict share and imbalance, by verdict", "merge")
    caption = (
        "Per shared layer: subspace overlap of the two updates above its chance level, directional "
        "agreement (below 0: opposite directions), share of conflicting directions, and norm "
        "imbalance (log scale where it spans more than a factor of 10); marker and colour = verdict; "
        "dashed lines = the audit's thresholds"
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
