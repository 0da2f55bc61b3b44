"""Human renderings of an AuditReport: plain-text tables and Markdown.  JSON is AuditReport.to_json."""

from __future__ import annotations

import json

from .. import metrics
from .audit import AuditReport, LayerReport


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _layer_rows(layers: list[LayerReport], key: str) -> tuple[list[str], list[list[str]]]:
    headers = ["layer", "shape", "r", "stable", "k@τ", "erank", "util", "suggest"]
    rows = []
    for x in layers:
        m = x.metrics
        rows.append(
            [
                x.name + (" [dead]" if x.dead else "") + (" [dora]" if x.info.dora else ""),
                f"{x.info.out_features}×{x.info.in_features}",
                str(x.info.rank),
                _fmt(m["stable_rank"]),
                str(int(m[key])),
                _fmt(m["effective_rank"]),
                _fmt(m["utilisation"]),
                str(x.suggested_rank),
            ]
        )
    return headers, rows


def wasteful(report: AuditReport, n: int) -> list[LayerReport]:
    """The n layers with the lowest utilisation (dead layers first)."""
    return sorted(report.layers, key=lambda x: (not x.dead, x.metrics["utilisation"], x.name))[:n]


def to_text(
    report: AuditReport, *, show_layers: bool = False, top_wasteful: int = 0, per_layer: bool = False
) -> str:
    s, g = report.summary, report.suggestions
    key = metrics.energy_key(report.options.tau)
    src = report.source
    out = [f"lorascope audit: {src.get('path') or '<memory>'} ({src['format']})"]
    if src.get("base_model_name_or_path"):
        out.append(f"  base model: {src['base_model_name_or_path']}")
    ranks = ", ".join(map(str, s["allocated_ranks"]))
    out.append(
        f"  layers: {s['n_layers']} (dead: {s['n_dead']}), allocated r: {ranks}, LoRA params: {s['params']:,}"
    )
    if src.get("modules_to_save"):
        out.append(f"  modules_to_save (not audited): {', '.join(src['modules_to_save'])}")
    out.append("")
    out.append("  metric                     mean   median      p90")
    for name in ("stable_rank", "effective_rank", "utilisation", key):
        st = s[name]
        out.append(f"  {name:<22} {st['mean']:>8.2f} {st['median']:>8.2f} {st['p90']:>8.2f}")
    out.append("")
    out.append(f"  suggested rank (energy τ={report.options.tau:g}, rounding {g['rounding']}):")
    for label in ("median", "p90"):
        e = g[label]
        out.append(f"    {label:<7} r={e['rank']:<4} params {e['params']:,} ({e['reduction']:.0%} fewer)")
    pl = g["per_layer"]
    out.append(
        f"    per-layer     params {pl['params']:,} ({pl['reduction']:.0%} fewer)  [--suggest-per-layer]"
    )
    if top_wasteful:
        out += ["", f"  {top_wasteful} least-utilised layers:"]
        out += ["  " + r for r in _table(*_layer_rows(wasteful(report, top_wasteful), key))]
    if show_layers:
        out += ["", "  layers:"]
        out += ["  " + r for r in _table(*_layer_rows(list(report.layers), key))]
    if per_layer and "peft_config" in g:
        out += ["", "  PEFT config for the per-layer suggestion (paste into LoraConfig):"]
        out += ["  " + line for line in json.dumps(g["peft_config"], indent=2).splitlines()]
    for note in report.notes:
        out.append(f"  note: {note}")
    return "\n".join(out) + "\n"


def to_markdown(report: AuditReport, *, show_layers: bool = True, top_wasteful: int = 0) -> str:
    s, g = report.summary, report.suggestions
    key = metrics.energy_key(report.options.tau)
    out = [f"# lorascope audit: `{report.source.get('path') or '<memory>'}`", ""]
    out += [f"- format: {report.source['format']}", f"- layers: {s['n_layers']} (dead: {s['n_dead']})"]
    out += [
        f"- allocated ranks: {', '.join(map(str, s['allocated_ranks']))}",
        f"- LoRA parameters: {s['params']:,}",
        "",
    ]
    out += ["| metric | mean | median | p90 |", "|---|---:|---:|---:|"]
    for name in ("stable_rank", "effective_rank", "utilisation", key):
        st = s[name]
        out.append(f"| {name} | {st['mean']:.2f} | {st['median']:.2f} | {st['p90']:.2f} |")
    out += ["", f"## Suggested ranks (τ = {report.options.tau:g}, rounding {g['rounding']})", ""]
    out += ["| policy | rank | params | reduction |", "|---|---:|---:|---:|"]
    for label in ("median", "p90"):
        e = g[label]
        out.append(f"| {label} | {e['rank']} | {e['params']:,} | {e['reduction']:.0%} |")
    out.append(f"| per-layer | varies | {g['per_layer']['params']:,} | {g['per_layer']['reduction']:.0%} |")
    chosen = wasteful(report, top_wasteful) if top_wasteful else (list(report.layers) if show_layers else [])
    if chosen:
        headers, rows = _layer_rows(chosen, key)
        out += ["", "## Layers", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    if report.notes:
        out += ["", *(f"> {n}" for n in report.notes)]
    return "\n".join(out) + "\n"
