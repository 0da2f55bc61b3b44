"""Bench section: a `lorascope bench` output directory (one `bench.json` per seed folder, and
`bench_aggregate.json`), or one of those files.

Read defensively: the keys are Gradience's bench names (`probe{rank, params, accuracy}`,
`compressed{variant: {rank, params, accuracy, delta_vs_probe, param_reduction, verdict}}`,
`safety_policy` / `policy` with `worst_delta_min`); absent optional keys are shown as "—", a present
key of the wrong type is an error naming it.  Plot: accuracy against LoRA parameters per variant,
one panel per seed, with the policy band (probe accuracy down to probe + worst_delta_min).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FormatError
from .base import Built, SectionKind
from .fields import Doc
from .html import Percent, figure, table
from .inputs import read_json
from .plot import LEGEND, MARGINS, PALETTE, log_axis, new_figure, safe, to_svg

DEFAULT_WORST_DELTA = -0.025  # the bench's default policy: no seed may lose more than 2.5 points


def _seed_order(f: Path) -> tuple[int, str]:
    """seed_42 before seed_123: numeric seeds in numeric order, other folder names after them."""
    tail = f.parent.name.rpartition("_")[2]
    return (int(tail), "") if tail.isdigit() else (1 << 62, f.parent.name)


def _collect(path: str, doc: Any) -> tuple[list[tuple[str, str, Any]], tuple[str, Any] | None]:
    """([(seed label, its bench.json path, its document)], (aggregate path, document) or None)."""
    p = Path(path)
    if doc is not None:  # a single file
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if p.name == "bench_aggregate.json" or "aggregate" in str(schema):
            return [], (path, doc)
        return [(p.parent.name, path, doc)], None
    files = sorted(p.glob("*/bench.json"), key=_seed_order)
    if (p / "bench.json").is_file():
        files.insert(0, p / "bench.json")
    seeds = [(f.parent.name, str(f), read_json(str(f))) for f in files]
    agg = p / "bench_aggregate.json"
    return seeds, ((str(agg), read_json(str(agg))) if agg.is_file() else None)


def _seed(label: str, raw: Any, path: str) -> dict[str, Any]:
    d = Doc(raw, path)
    probe = d.need("probe")
    policy = d.obj(d.first("safety_policy", "policy") or "safety_policy", optional=True)
    worst = policy.num("worst_delta_min", optional=True) if policy else None
    variants = []
    compressed = d.obj("compressed", optional=True)
    for name, value in compressed.data.items() if compressed else []:
        v = Doc(value, path, f"compressed.{name}")
        variants.append(
            {
                "variant": name,
                "rank": v.raw("rank"),
                "params": v.num("params", optional=True),
                "accuracy": v.num("accuracy", optional=True),
                "delta": v.num("delta_vs_probe", optional=True),
                "reduction": v.num("param_reduction", optional=True),
                "verdict": v.text("verdict", optional=True),
            }
        )
    seed = d.raw("seed", label)
    return {
        "seed": str(seed),
        "probe": {
            "rank": probe.raw("rank"),
            "params": probe.num("params", optional=True),
            "accuracy": probe.num("accuracy", optional=True),
        },
        "worst_delta_min": DEFAULT_WORST_DELTA if worst is None else worst,
        "variants": variants,
    }


def build(path: str, doc: Any) -> Built:
    raw_seeds, agg_file = _collect(path, doc)
    if not raw_seeds and agg_file is None:  # only bench_config.json: no seed has finished yet
        raise FormatError(
            "a bench folder with no finished seed yet (no */bench.json, no bench_aggregate.json)",
            path=path,
            hint="report it once a seed has finished; `lorascope bench CONFIG --out DIR --resume` "
            "continues a stopped bench",
        )
    seeds = [_seed(label, raw, file) for label, file, raw in raw_seeds]  # errors name the seed's file
    agg = agg_file[1] if agg_file else None
    data = {"seeds": {label: raw for label, _, raw in raw_seeds}, "aggregate": agg}
    body = [_plot(seeds)] if seeds else ['<p class="missing">No per-seed bench.json found.</p>']
    facts: list[tuple[str, Any]] = [
        ("seeds", len(seeds)),
        ("variants", len({v["variant"] for s in seeds for v in s["variants"]})),
    ]
    if agg_file is not None:
        a = Doc(agg_file[1], agg_file[0])
        facts += _aggregate_facts(a)
        body.append(_aggregate(a))
    return Built(data=data, facts=facts, body="".join(body))


# variant styles: colours with contrast on white (no yellow; black is the probe's), markers other
# than the probe's star, each drawn with an edge
VARIANT_COLOURS = tuple(c for c in PALETTE if c not in ("#F0E442", "#000000"))
MARKERS = "osD^vPXhp<>"


def _count(x: float | None) -> float | int | None:
    """A parameter count read as a number: shown as the integer it is (110592, not 1.106e+05)."""
    return int(x) if x is not None and float(x).is_integer() else x


def _panel(ax: Any, s: dict[str, Any], style: dict[str, tuple[str, str]]) -> None:
    probe = s["probe"]
    if probe["accuracy"] is not None:
        floor = probe["accuracy"] + s["worst_delta_min"]
        ax.axhspan(floor, probe["accuracy"], color="#009E73", alpha=0.15, label="policy band")
        ax.axhline(floor, color="#009E73", ls="--", lw=0.8)
        if probe["params"] is not None:
            ax.plot(
                [probe["params"]], [probe["accuracy"]], "*", ms=12, color="#000000", mec="#FFFFFF",
                mew=0.6, label="probe", zorder=4,
            )  # fmt: skip
    for v in s["variants"]:
        if v["params"] is None or v["accuracy"] is None:
            continue
        colour, marker = style[v["variant"]]
        filled = (v["verdict"] or "").upper() == "PASS"
        edge = (
            {"mec": "#000000", "mew": 0.7, "mfc": colour}
            if filled
            else {"mec": colour, "mew": 1.5, "mfc": "#FFFFFF"}
        )
        ax.plot(
            [v["params"]],
            [v["accuracy"]],
            marker,
            ms=7,
            color=colour,
            label=safe(v["variant"]),
            zorder=3,
            **edge,
        )
    log_axis(ax, "x")
    ax.set_title(safe(f"seed {s['seed']}"))
    ax.set_xlabel("LoRA parameters")


def _plot(seeds: list[dict[str, Any]]) -> str:
    n = min(len(seeds), 6)
    cols = min(n, 3)
    nrows = -(-n // cols)  # as many rows as the panels need: no empty row of hidden axes
    names = sorted({v["variant"] for s in seeds for v in s["variants"]})
    style = {
        name: (VARIANT_COLOURS[i % len(VARIANT_COLOURS)], MARKERS[i % len(MARKERS)])
        for i, name in enumerate(names)
    }
    legend_rows = -(-(len(names) + 2) // 4)  # the legend sits under the panels, 4 entries a row
    height = 2.9 * nrows + 0.22 * legend_rows + 0.2
    bottom = (0.55 + 0.22 * legend_rows) / height
    margins = {"bottom": bottom, "top": 1 - 0.3 / height, "hspace": 0.45, "wspace": 0.12}
    fig, axes = new_figure(8.0, height, nrows, cols, margins=margins, sharey=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, s in zip(flat, seeds, strict=False):
        _panel(ax, s, style)
    for ax in flat[len(seeds) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy")
    entries: dict[str, Any] = {}  # every variant once, whichever panel drew it
    for ax in flat[: len(seeds)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(
        list(entries.values()), list(entries), loc="lower left", bbox_to_anchor=(MARGINS["left"], 0.0),
        ncols=4, **LEGEND,
    )  # fmt: skip
    svg = to_svg(fig, "Accuracy against parameters per variant and seed", "bench")
    rows = [
        [
            s["seed"],
            v["variant"],
            v["rank"] if isinstance(v["rank"], int) else str(v["rank"]),
            _count(v["params"]),
            v["accuracy"],
            v["delta"],
            Percent(v["reduction"]),
            v["verdict"],
        ]
        for s in seeds
        for v in s["variants"]
    ]
    head = ["seed", "variant", "rank", "params", "accuracy", "Δ vs probe", "param reduction", "verdict"]
    caption = (
        "Accuracy against LoRA parameters per variant, one panel per seed (log axis where the counts "
        "span more than a factor of 10); star: the probe; band: probe accuracy down to the policy's "
        "worst allowed Δ; filled marker with a black edge: PASS, hollow: FAIL"
    )
    if len(seeds) > 6:
        caption += f" (first 6 of {len(seeds)} seeds plotted; the table has all)"
    return figure(svg, caption, table(head, rows, "Variants per seed"))


def _aggregate(a: Doc) -> str:
    """The per-variant table across seeds: `variant_results` (or `variants`), each row's scalar
    fields, plus `policy_compliance[variant].policy_compliant` where given."""
    key = a.first("variant_results", "variants", "aggregate")
    block = a.obj(key, optional=True) if key else None
    if block is None:
        return ""
    compliance = a.obj("policy_compliance", optional=True)
    cols: list[str] = []
    for v in block.data.values():
        for k, x in v.items() if isinstance(v, dict) else ():
            if isinstance(x, (str, int, float, bool)) and k not in cols:
                cols.append(k)
    rows = []
    for name, v in block.data.items():
        c = compliance.raw(name) if compliance else None
        ok = c.get("policy_compliant") if isinstance(c, dict) else None
        cells = [(v.get(col) if isinstance(v, dict) else None) for col in cols]
        cells = [_shown(col, c) for col, c in zip(cols, cells, strict=True)]
        rows.append([name, *cells, ok])
    return table(["variant", *cols, "policy compliant"], rows, "Across seeds (bench_aggregate.json)")


def _shown(column: str, value: Any) -> Any:
    """Reductions and shares as the CLI prints them (87.5 %), other values as they are."""
    fraction = ("reduction" in column or "share" in column) and isinstance(value, (int, float))
    return Percent(value) if fraction and not isinstance(value, bool) else value


def _aggregate_facts(a: Doc) -> list[tuple[str, Any]]:
    best = a.raw("best_compression")
    level = a.raw("validation_classification", a.raw("validation_level"))
    if isinstance(level, dict):  # lorascope bench: {"level": ..., "rationale": ...}
        level = level.get("level")
    return [
        ("validation", level if isinstance(level, str) else None),
        ("best compliant variant", best.get("variant") if isinstance(best, dict) else None),
        (
            "its parameter reduction",
            _shown("reduction", best.get("param_reduction")) if isinstance(best, dict) else None,
        ),
        ("its worst-seed Δ", best.get("delta_worst") if isinstance(best, dict) else None),
    ]


SECTION = SectionKind(
    name="bench",
    title="Bench",
    schemas=("lorascope.bench", "lorascope.bench_aggregate"),
    files=("bench_aggregate.json", "bench.json", "*/bench.json", "bench_config.json"),
    build=build,
)
