"""Human renderings of an AuditReport: plain-text tables and Markdown.  JSON is AuditReport.to_json.

Both views are built from the same sections (a title, headers, rows), so they show the same facts:
the summary metrics with every threshold's k@τ, utilisation as a percentage (JSON keeps the
fraction), suggested ranks, the module-type and per-block summaries, the update-to-base ratios
(with a base model), the rank-policy table and the layers where policies disagree, then the
least-utilised layers (--top-wasteful), every layer (--layers) and the PEFT config (--suggest-per-layer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..order import natural_key
from ..textsafe import clean
from .audit import AuditReport, LayerReport

DISAGREE_ROWS = 15  # disagreeing layers shown in text and Markdown (JSON lists all)


@dataclass(frozen=True)
class View:
    show_layers: bool = False
    top_wasteful: int = 0
    per_layer: bool = False  # the PEFT config of the per-layer suggestion


@dataclass(frozen=True)
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def pct(x: float) -> str:
    """A fraction as a percentage with enough digits: 0.0213 → "2.1 %", 0.0031 → "0.31 %"."""
    v = 100.0 * x
    return f"{v:.1f} %" if v >= 1 or v == 0 else f"{v:.2g} %"


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _keys(report: AuditReport) -> list[str]:
    return [metrics.energy_key(t) for t in report.options.thresholds]


def wasteful(report: AuditReport, n: int) -> list[LayerReport]:
    """The n layers with the lowest utilisation (dead layers first)."""
    order = sorted(report.layers, key=lambda x: (not x.dead, x.metrics["utilisation"], natural_key(x.name)))
    return order[:n]


def _summary(report: AuditReport) -> Section:
    s, rows = report.summary, []
    for name in ("stable_rank", "effective_rank", "utilisation", *_keys(report)):
        st = s[name]
        fmt = pct if name == "utilisation" else _num
        rows.append([name, fmt(st["mean"]), fmt(st["median"]), fmt(st["p90"])])
    return Section("summary over live layers", ["metric", "mean", "median", "p90"], rows)


def _suggestions(report: AuditReport) -> Section:
    g = report.suggestions
    rows = [[k, str(g[k]["rank"]), f"{g[k]['params']:,}", pct(g[k]["reduction"])] for k in ("median", "p90")]
    pl = g["per_layer"]
    rows.append(["per-layer", "varies", f"{pl['params']:,}", pct(pl["reduction"])])
    title = f"suggested rank (energy τ={report.options.tau:g}, rounding {g['rounding']})"
    return Section(title, ["policy", "rank", "params", "fewer params"], rows)


def _by_type(report: AuditReport) -> Section:
    keys = _keys(report)
    headers = ["type", "layers", "params", "stable mean", "util mean"]
    headers += [f"k{k.removeprefix('energy_rank')} {q}" for k in keys for q in ("p50", "p90")]
    rows = []
    for kind, e in report.summary["by_type"].items():
        row = [
            kind,
            str(e["n_layers"]),
            f"{e['params']:,}",
            _num(e["stable_rank_mean"]),
            pct(e["utilisation_mean"]),
        ]
        rows.append(row + [_num(e[k][q], 1) for k in keys for q in ("p50", "p90")])
    return Section("by module type (k@τ: energy rank at τ, over live layers)", headers, rows)


def _blocks(report: AuditReport) -> Section | None:
    b = report.summary["blocks"]
    if not b["n_blocks"]:
        return None
    n = b["n_blocks"]
    note = f"HHI {b['hhi']:.3f} (1/{n} = {1 / n:.3f} if spread evenly)"
    if b["unassigned_share"]:
        note += f"; layers without a block: {pct(b['unassigned_share'])}"
    size = {x["block"]: x["n_layers"] for x in b["blocks"]}
    rows = [[t["block"], str(size[t["block"]]), pct(t["share"])] for t in b["top"]]
    return Section(
        f"energy share ‖ΔW‖_F² by block: top {len(rows)} of {n}", ["block", "layers", "share"], rows, note
    )


def _udr(report: AuditReport) -> Section | None:
    u = report.summary.get("udr")
    if u is None:
        return None
    base = report.source["base_model"]
    rows = []
    for key, label in (("udr", "udr ‖ΔW‖₂/‖W‖₂"), ("udr_f", "udr_f ‖ΔW‖_F/‖W‖_F"), ("sdi", "sdi log10(udr)")):
        st = u[key]
        rows.append([label, *(f"{st[q]:.3g}" for q in ("median", "p90", "max", "mean"))])
    note = f"udr > 0.1: {pct(u['fraction_udr_gt_0_1'])} of layers, > 0.3: {pct(u['fraction_udr_gt_0_3'])}"
    n = report.summary["n_layers"]
    title = f"update-to-base ratio ({base['n_matched']} of {n} layers; base {base['path']})"
    return Section(title, ["ratio", "median", "p90", "max", "mean"], rows, note)


def _policies(report: AuditReport) -> list[Section]:
    p = report.policies
    if p is None:
        return []
    rows = []
    for name, e in p["global"].items():
        vals = [
            _num(e["median"], 1),
            _num(e["p90"], 1),
            str(e["max"]),
            str(e["rank_median"]),
            str(e["rank_p90"]),
        ]
        rows.append([name, *vals, pct(e["share_keep_rank"])])
    headers = ["policy", "k p50", "k p90", "k max", "rank p50", "rank p90", "k ≥ 0.8·r"]
    out = [Section("rank policies (per-layer k; rank: rounded, capped)", headers, rows)]
    if len(p["names"]) > 1:
        shown = p["disagree"][:DISAGREE_ROWS]
        r_of = {x.name: x.info.rank for x in report.layers}
        rows = [
            [d["name"], str(r_of[d["name"]]), *(str(d["ks"][n]) for n in p["names"]), f"{d['ratio']:.1f}×"]
            for d in shown
        ]
        n_live = report.summary["n_layers"] - report.summary["n_dead"]
        title = f"layers where policies disagree by more than {p['factor']:g}×: {p['n_disagree']} of {n_live}"
        note = (
            f"(largest ratio first; {len(shown)} shown, --json lists all)"
            if p["n_disagree"] > len(shown)
            else ""
        )
        out.append(Section(title, ["layer", "r", *p["names"], "max/min"], rows, note))
    return out


def _layer_rows(report: AuditReport, layers: list[LayerReport], title: str) -> Section:
    keys, names = _keys(report), list(report.options.policies)
    headers = ["layer", "type", "shape", "r", "stable", *("k" + k.removeprefix("energy_rank") for k in keys)]
    headers += ["erank", "util", "suggest", *(f"k:{n}" for n in names)]
    with_base = report.options.base_model is not None
    headers += ["udr", "udr_f"] if with_base else []
    rows = []
    for x in layers:
        m = x.metrics
        row = [
            x.name + (" [dead]" if x.dead else "") + (" [dora]" if x.info.dora else ""),
            x.module_type,
            f"{x.info.out_features}×{x.info.in_features}",
            str(x.info.rank),
            _num(m["stable_rank"]),
            *(str(int(m[k])) for k in keys),
            _num(m["effective_rank"]),
            pct(m["utilisation"]),
            str(x.suggested_rank),
            *(str(x.policies[n]) for n in names),
        ]
        if with_base:
            b = x.base or {}
            row += [_num(b.get("udr"), 3), _num(b.get("udr_f"), 3)]
        rows.append(row)
    return Section(title, headers, rows)


def sections(report: AuditReport, view: View) -> list[Section]:
    out = [_summary(report), _suggestions(report), _by_type(report)]
    out += [s for s in (_blocks(report), _udr(report)) if s is not None]
    out += _policies(report)
    if view.top_wasteful:
        out.append(
            _layer_rows(
                report, wasteful(report, view.top_wasteful), f"{view.top_wasteful} least-utilised layers"
            )
        )
    if view.show_layers:
        out.append(_layer_rows(report, list(report.layers), "layers"))
    return out


def _header(report: AuditReport) -> list[str]:
    s, src = report.summary, report.source
    ranks = ", ".join(map(str, s["allocated_ranks"]))
    out = []
    if src.get("base_model_name_or_path"):
        out.append(f"base model (config): {src['base_model_name_or_path']}")
    out.append(
        f"layers: {s['n_layers']} (dead: {s['n_dead']}), allocated r: {ranks}, LoRA params: {s['params']:,}"
    )
    if src.get("modules_to_save"):
        out.append(f"modules_to_save (not audited): {', '.join(src['modules_to_save'])}")
    return out


def _text_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _peft_config(report: AuditReport, view: View) -> dict[str, Any] | None:
    return report.suggestions.get("peft_config") if view.per_layer else None


def to_text(report: AuditReport, view: View | None = None) -> str:
    view = view or View()
    src = report.source
    out = [f"lorascope audit: {src.get('path') or '<memory>'} ({src['format']})"]
    out += [f"  {line}" for line in _header(report)]
    for sec in sections(report, view):
        out += ["", f"  {sec.title}:"]
        out += ["  " + r for r in _text_table(sec.headers, sec.rows)]
        if sec.note:
            out.append(f"  {sec.note}")
    cfg = _peft_config(report, view)
    if cfg is not None:
        out += ["", "  PEFT config for the per-layer suggestion (paste into LoraConfig):"]
        out += ["  " + line for line in json.dumps(cfg, indent=2).splitlines()]
    out += [f"  note: {n}" for n in report.notes]
    return "\n".join(clean(line) for line in out) + "\n"  # names come from files: escapes shown, not run


def to_markdown(report: AuditReport, view: View | None = None) -> str:
    view = view or View()
    src = report.source
    out = [f"# lorascope audit: `{src.get('path') or '<memory>'}`", "", f"- format: {src['format']}"]
    out += [f"- {line}" for line in _header(report)]
    for sec in sections(report, view):
        out += ["", f"## {sec.title[0].upper()}{sec.title[1:]}", ""]
        out += ["| " + " | ".join(sec.headers) + " |", "|---|" + "---:|" * (len(sec.headers) - 1)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in sec.rows]
        if sec.note:
            out += ["", sec.note]
    cfg = _peft_config(report, view)
    if cfg is not None:
        out += [
            "",
            "## PEFT config for the per-layer suggestion",
            "",
            "```json",
            *json.dumps(cfg, indent=2).splitlines(),
            "```",
        ]
    if report.notes:
        out += ["", *(f"> {n}" for n in report.notes)]
    return "\n".join(clean(line) for line in out) + "\n"
