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

from .base import Built, SectionKind
from .fields import Doc
from .html import figure, table
from .inputs import read_json
from .plot import PALETTE, log_axis, new_figure, safe, to_svg

DEFAULT_WORST_DELTA = -0.025  # the bench's default policy: no seed may lose more than 2.5 points
MARKERS = "osD^vP*Xhp<>"


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


def _plot(seeds: list[dict[str, Any]]) -> str:
    n = min(len(seeds), 6)
    cols = min(n, 3)
    nrows = -(-n // cols)  # as many rows as the panels need: no empty row of hidden axes
    fig, axes = new_figure(8.0, 3.0 * nrows - 0.2 * (nrows - 1), nrows, cols, sharey=True, squeeze=False)
    names = sorted({v["variant"] for s in seeds for v in s["variants"]})
    style = {name: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}
    flat = [ax for row in axes for ax in row]
    for ax, s in zip(flat, seeds, strict=False):
        probe = s["probe"]
        if probe["accuracy"] is not None:
            floor = probe["accuracy"] + s["worst_delta_min"]
            ax.axhspan(floor, probe["accuracy"], color="#009E73", alpha=0.15, label="policy band")
            ax.axhline(floor, color="#009E73", ls="--", lw=0.8)
            if probe["params"] is not None:
                ax.plot([probe["params"]], [probe["accuracy"]], "*", ms=10, color="#000000", label="probe")
        for v in s["variants"]:
            if v["params"] is None or v["accuracy"] is None:
                continue
            colour, marker = style[v["variant"]]
            filled = (v["verdict"] or "").upper() == "PASS"
            ax.plot(
                [v["params"]],
                [v["accuracy"]],
                marker,
                ms=7,
                color=colour,
                mfc=colour if filled else "none",
                label=safe(v["variant"]),
            )
        log_axis(ax, "x")
        ax.set_title(safe(f"seed {s['seed']}"))
        ax.set_xlabel("LoRA parameters")
    for ax in flat[len(seeds) :]:
        ax.set_visible(False)
    flat[0].set_ylabel("accuracy")
    handles, labels = flat[0].get_legend_handles_labels()
    flat[0].legend(handles, labels, fontsize=6, loc="lower right")
    svg = to_svg(fig, "Accuracy against parameters per variant and seed", "bench")
    rows = [
        [
            s["seed"],
            v["variant"],
            v["rank"] if isinstance(v["rank"], int) else str(v["rank"]),
            v["params"],
            v["accuracy"],
            v["delta"],
            v["reduction"],
            v["verdict"],
        ]
        for s in seeds
        for v in s["variants"]
    ]
    head = ["seed", "variant", "rank", "params", "accuracy", "Δ vs probe", "param reduction", "verdict"]
    caption = (
        "Accuracy against LoRA parameters (log) per variant, one panel per seed; star: the probe; "
        "band: probe accuracy down to the policy's worst allowed Δ; filled marker: PASS"
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
        rows.append([name, *[(v.get(col) if isinstance(v, dict) else None) for col in cols], ok])
    return table(["variant", *cols, "policy compliant"], rows, "Across seeds (bench_aggregate.json)")


def _aggregate_facts(a: Doc) -> list[tuple[str, Any]]:
    best = a.raw("best_compression")
    level = a.raw("validation_classification", a.raw("validation_level"))
    if isinstance(level, dict):  # lorascope bench: {"level": ..., "rationale": ...}
        level = level.get("level")
    return [
        ("validation", level if isinstance(level, str) else None),
        ("best compliant variant", best.get("variant") if isinstance(best, dict) else None),
        ("its parameter reduction", best.get("param_reduction") if isinstance(best, dict) else None),
        ("its worst-seed Δ", best.get("delta_worst") if isinstance(best, dict) else None),
    ]


SECTION = SectionKind(
    name="bench",
    title="Bench",
    schemas=("lorascope.bench", "lorascope.bench_aggregate"),
    files=("bench_aggregate.json", "bench.json", "*/bench.json"),
    build=build,
)
