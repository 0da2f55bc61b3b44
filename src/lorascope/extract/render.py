"""Text views of ExtractReport and VerifyReport (JSON is each report's `to_json`)."""

from __future__ import annotations

import math

from ..textsafe import clean
from .extract import ExtractReport
from .verify import VerifyReport

SHOWN = 10  # listed names per group in text (JSON lists all)


def _some(names, n: int = SHOWN) -> str:
    names = list(names)
    more = f", … (+{len(names) - n})" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def extract_text(report: ExtractReport, show_layers: bool = False) -> str:
    s, p = report.summary(), report.plan
    mode = report.mode
    lines = [
        f"lorascope extract  {report.base}  +  {report.tuned}  →  {report.output}  ({report.format})",
        f"mode: {mode.kind} {mode.value} (rounding {mode.rule})   min change: {report.min_change:g}",
        f"LoRA layers: {s['n_layers']}   params: {s['params']:,}   "
        f"‖ΔW − B·A‖/‖ΔW‖: {s['rel_frobenius_error']:.4g} (worst layer {s['max_layer_rel_error']:.4g}), "
        f"kept energy ≥ {100 * s['min_kept_energy']:.2f} % per layer",
        f"skipped: {len(p.below)} tensors changed by less than --min-change, {p.unchanged} unchanged",
    ]
    if show_layers:
        width = max((len(x.name) for x in report.layers), default=5)
        lines.append(f"{'layer':<{width}}  rank/full  change   kept%     rel.err   solver")
        for x in report.layers:
            lines.append(
                f"{x.name:<{width}}  {x.rank:>4}/{x.full_rank:<4} {x.rel_change:8.3g} "
                f"{100 * x.kept_energy:7.3f}  {x.rel_error:9.3g}  {x.solver}"
            )
    if p.full_modules:
        how = (
            "written (modules_to_save)"
            if report.full_written
            else f"NOT written ({report.format} cannot hold full weights)"
        )
        lines.append(f"full weights {how}: {_some(p.full_modules)}")
    if p.lora_bias:
        how = "written as lora_B.bias" if report.full_written else "NOT written"
        lines.append(f"changed biases of LoRA layers {how}: {_some(c.key for c in p.lora_bias)}")
    if p.outside:
        lines.append(f"changed but outside --modules, not extracted: {_some(c.key for c in p.outside)}")
    if report.unmatched_base or report.unmatched_tuned:
        lines.append(
            f"unmatched keys: BASE {_some(report.unmatched_base) or '-'}; "
            f"TUNED {_some(report.unmatched_tuned) or '-'}"
        )
    if report.not_float:
        lines.append(f"not compared (not float): {_some(report.not_float)}")
    if report.renamed:
        lines.append(f"{report.renamed} keys matched across a name prefix")
    audit = report.audit.get("summary") or {}
    sugg = report.audit.get("suggestions") or {}
    if audit:
        ranks = ", ".join(
            f"{k} r={v['rank']}" for k, v in sugg.items() if isinstance(v, dict) and "rank" in v
        )
        lines.append(
            f"audit of the result: {audit.get('n_layers', s['n_layers'])} layers; "
            f"suggested ranks: {ranks or '-'}"
        )
    return "\n".join(clean(line) for line in lines) + "\n"


def verify_text(report: VerifyReport, show_all: bool = False) -> str:
    s = report.summary()
    verdict = "VERIFIED" if report.verified else "DEFECTS FOUND"
    lines = [
        f"lorascope verify-merge  {report.base}  +  {report.adapter}  =?  {report.merged}",
        f"{verdict}: {s['layers'] - s['layer_defects']}/{s['layers']} targeted layers verified, "
        f"{s['heads'] - s['head_defects']}/{s['heads']} saved heads match, "
        f"{s['untouched_unchanged']} untouched tensors unchanged, "
        f"{s['untouched_defects']} changed or missing",
    ]
    rows = [x for x in report.layers if show_all or not x.ok]
    if rows:
        width = max(len(x.name) for x in rows)
        lines.append(f"{'layer':<{width}}  rel.err     tol        k          diagnosis")
        for x in rows:
            g = x.diagnosis
            num = (
                f"{g.rel_error:9.3g}  {g.tolerance:9.3g}  {_k(g.k):>9}"
                if g is not None
                else f"{'-':>9}  {'-':>9}  {'-':>9}"
            )
            lines.append(f"{x.name:<{width}}  {num}  {x.detail}")
    for h in report.heads:
        lines.append(f"head {h.key}: {h.detail}")
    for t in report.others[:SHOWN]:
        lines.append(f"untouched {t.key}: {t.detail}")
    if len(report.others) > SHOWN:
        lines.append(f"… {len(report.others) - SHOWN} more changed or missing tensors (--json lists all)")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(clean(line) for line in lines) + "\n"


def _k(k: float) -> str:
    return f"{k:.4f}" if math.isfinite(k) else "-"
