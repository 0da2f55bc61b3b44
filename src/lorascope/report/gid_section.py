"""GID section: a `gid.json` (`lorascope gid`): the gradient intrinsic dimension of each layer
against its LoRA rank.

Read defensively: `layers[]` with `name` and the GID as the first of `gid`, `erank`,
`effective_rank`; the LoRA rank per layer (`lora_rank`, `r`, `rank`) or for the whole file
(top-level `lora_rank`, `r`, `rank`); a layer is starved where the file says so (`starved`), else
where GID ≥ `starved_factor` (the file's, default 4) × r.  Starved layers are hatched, labelled in
the table, and counted in the headline.
"""

from __future__ import annotations

from typing import Any

from ..order import natural_key
from .base import Built, SectionKind
from .fields import Doc
from .html import figure, table
from .inputs import doc_in
from .plot import integer_axis, legend_above, legend_patch, log_axis, new_figure, to_svg


def build(path: str, doc: Any) -> Built:
    # `lorascope gid`'s rule (starved when GID ≥ 4·r); imported here, not at the top: lorascope.gid
    # costs ≈ 50 ms that every report without a gid.json would pay
    from ..gid.report import STARVED_FACTOR

    doc = doc_in(path, doc, "gid.json")
    d = Doc(doc, path)
    top_key = d.first("lora_rank", "r", "rank")
    top_r = d.num(top_key) if top_key else None
    factor = d.num("starved_factor", optional=True) or STARVED_FACTOR
    layers = []
    for x in d.objs("layers"):
        gk, rk = x.first("gid", "erank", "effective_rank"), x.first("lora_rank", "r", "rank")
        gid = x.num(gk) if gk else x.num("gid")
        r = x.num(rk) if rk else top_r
        flag = x.raw("starved")
        starved = (
            flag if isinstance(flag, bool) else (r is not None and gid is not None and gid >= factor * r)
        )
        layers.append({"name": x.text("name"), "gid": gid, "r": r, "starved": starved})
    facts: list[tuple[str, Any]] = [
        ("layers", len(layers)),
        ("starved layers", sum(x["starved"] for x in layers)),
        ("LoRA rank", top_r),
        ("starved when GID ≥", f"{factor:g} × r"),
    ]
    body = _plot(layers, factor) if layers else '<p class="missing">No layers.</p>'
    return Built(data=doc, facts=facts, body=body)


def _plot(layers: list[dict[str, Any]], factor: float) -> str:
    layers = sorted(layers, key=lambda x: natural_key(x["name"]))  # layers.2 before layers.10
    fig, ax = new_figure(8.0, 3.6, margins={"top": 0.88, "left": 0.09})
    xs = list(range(len(layers)))
    colours = ["#D55E00" if x["starved"] else "#0072B2" for x in layers]
    bars = ax.bar(xs, [x["gid"] for x in layers], color=colours, edgecolor="#000000", lw=0.3)
    for bar, x in zip(bars, layers, strict=True):
        if x["starved"]:
            bar.set_hatch("///")
    if any(x["r"] is not None for x in layers):
        ax.step(xs, [x["r"] for x in layers], where="mid", color="#000000", lw=1.2, label="LoRA rank r")
    log_axis(ax, values=[v for x in layers for v in (x["gid"], x["r"])])
    integer_axis(ax, "x")
    ax.set_xlabel("layer # (natural order of the names; the table lists them)")
    ax.set_ylabel("dimension: GID (bars), r (line)")  # both counts of directions, one axis
    handles, labels = ax.get_legend_handles_labels()
    for colour, hatch, label in (("#0072B2", "", "GID"), ("#D55E00", "///", f"starved (GID ≥ {factor:g}·r)")):
        handles.append(legend_patch(colour, hatch))
        labels.append(label)
    legend_above(ax, handles, labels)
    svg = to_svg(fig, "GID per layer against the LoRA rank", "gid")
    rows = [
        [
            i,
            x["name"],
            x["gid"],
            x["r"],
            (x["gid"] / x["r"]) if x["r"] else None,
            "starved" if x["starved"] else "",
        ]
        for i, x in enumerate(layers)
    ]
    tab = table(["#", "layer", "GID", "r", "GID / r", ""], rows, "GID per layer", collapsed=len(rows) > 40)
    return figure(
        svg,
        "Gradient intrinsic dimension per layer (bars) and the LoRA rank r (line), on one axis (log "
        "scale where the values span more than a factor of 10); hatched: starved",
        tab,
    )


SECTION = SectionKind(
    name="gid",
    title="Gradient intrinsic dimension (GID)",
    schemas=("lorascope.gid",),
    files=("gid.json",),
    build=build,
)
