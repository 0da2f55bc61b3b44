"""Human views: a MergeAuditReport's per-layer table (`to_text`), Markdown report (`to_markdown`) and
`explain LAYER`; a MergeReport (`merged_text`).

Layer names, paths and notes come from the adapters: every text line goes through
`textsafe.clean` (a control character shows as ``\\x1b``, a newline cannot forge a line) and the
Markdown through `textsafe.md_text` / `md_code`.  The JSON views (`to_json`) are exact.
"""

from __future__ import annotations

import json

from ..textsafe import clean, md_code, md_text
from .audit import LayerPair, MergeAuditReport
from .report import MergeReport


def _short(name: str, width: int) -> str:
    name = clean(name)
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _lines(lines: list[str]) -> str:
    return "\n".join(clean(line) for line in lines) + "\n"


def _params(x: LayerPair) -> str:
    rec = x.recommendation
    parts = [rec.method]
    if rec.density is not None:
        parts.append(f"density {rec.density:.2f}")
    if rec.weights != (1.0, 1.0):
        parts.append("w ×" + "/".join(f"{w:.2f}" for w in rec.weights))
    if rec.method == "svd":
        parts.append(f"rank {rec.rank}")
    if rec.compress_first:
        parts.append("compress " + ",".join(f"#{i + 1}→{k}" for i, k in rec.compress_first.items()))
    return " ".join(parts)


def to_text(report: MergeAuditReport, show_layers: bool = True, width: int = 44) -> str:
    a, b = report.sources
    s = report.summary
    v = s["verdicts"]
    lines = [
        f"lorascope merge-audit  {a['path']}  ×  {b['path']}",
        f"shared layers: {s['n_shared']}   only in first: {len(report.only[0])}   "
        f"only in second: {len(report.only[1])}",
        "verdicts: " + " · ".join(f"{k} {n}" for k, n in v.items()) + f"   overall: {s['overall']}",
        f"norm-weighted: overlap above chance {s['weighted_overlap_excess']:.3f}   cosine "
        f"{s['weighted_cosine']:+.3f}   agreement {s['weighted_agreement']:+.2f}   "
        f"‖ΔW‖ totals {s['total_norms'][0]:.3g} / {s['total_norms'][1]:.3g}",
    ]
    if show_layers:
        lines.append("")
        head = f"{'layer':<{width}} {'r1/r2':>7} {'ratio':>6} {'cos':>6} {'overlap':>13} {'agree':>6} "
        lines.append(head + f"{'conf':>4} {'sign':>5}  {'verdict':<11} recommendation")
        for x in report.layers:
            p = x.metrics
            ratio = f"{p.magnitude_ratio:.2f}" if p.magnitude_ratio is not None else "inf"
            sign = f"{p.sign_conflict:.2f}" if p.sign_conflict is not None else "  -"
            lines.append(
                f"{_short(x.name, width):<{width}} {x.info1.rank:>3}/{x.info2.rank:<3} {ratio:>6} "
                f"{p.cosine:>+6.3f} {p.overlap:>5.3f} ({p.chance:.3f}) {p.agreement:>+6.2f} "
                f"{p.n_conflicting:>4} {sign:>5}  {x.verdict:<11} {_params(x)}"
            )
        lines.append(
            "overlap: mean cos² of the principal angles (left+right)/2, chance level in brackets; "
            "sign: TIES sign-conflict rate (0.5 = unrelated)"
        )
    for name in report.only[0][:10]:
        lines.append(f"only in first:  {name}")
    for name in report.only[1][:10]:
        lines.append(f"only in second: {name}")
    plan = report.plan()
    call = plan.peft.get("call", {})
    lines.append("")
    lines.extend(note for note in plan.notes if note.startswith("lossy:"))
    lines.append(
        "merge as recommended:  lorascope merge-audit A B --plan plan.json && "
        "lorascope merge A B --plan plan.json -o merged/"
    )
    lines.append(
        "closest PEFT call:     model.add_weighted_adapter("
        + ", ".join(f"{k}={json.dumps(v)}" for k, v in call.items())
        + ")"
    )
    lines.extend(f"note: {n}" for n in report.notes)
    return _lines(lines)


def explain(report: MergeAuditReport, name: str) -> str:
    x = report.layer(name)
    p, rec = x.metrics, x.recommendation
    ratio = f"{p.magnitude_ratio:.3f}" if p.magnitude_ratio is not None else "∞ (second is zero)"
    sign = (
        "no entry is in both top shares"
        if p.sign_conflict is None
        else f"{p.sign_conflict:.3f} over {p.sign_entries:,} entries"
        + (" (sampled grid)" if p.sign_sampled else " (exact)")
    )
    lines = [
        f"layer {x.name}  ({x.info1.kind}, ΔW {p.shape[0]}×{p.shape[1]})",
        f"  ranks r1/r2            {x.info1.rank} / {x.info2.rank}   "
        f"(effective {x.effective_ranks[0]:.1f} / {x.effective_ranks[1]:.1f}, k@τ {p.k1} / {p.k2})",
        f"  ‖ΔW‖_F                 {p.norm1:.4g} / {p.norm2:.4g}   ratio first/second {ratio}",
        f"  cosine ⟨ΔW₁,ΔW₂⟩        {p.cosine:+.4f}",
        f"  overlap output side    {p.overlap_left:.3f}  (chance {p.chance_left:.3f})",
        f"  overlap input side     {p.overlap_right:.3f}  (chance {p.chance_right:.3f})",
        f"  overlap above chance   {p.overlap_excess:.3f}",
        f"  principal cosines out  {_vec(p.cos_left)}",
        f"  principal cosines in   {_vec(p.cos_right)}",
        f"  agreement              {p.agreement:+.3f}   interference {p.interference:.3f}",
        f"  conflicting directions {p.n_conflicting} of {p.k1 + p.k2}",
        f"  sign conflict (TIES)   {sign}",
        f"  σ first                {_vec(p.sigma1)}",
        f"  σ second               {_vec(p.sigma2)}",
        f"verdict: {x.verdict}",
    ]
    lines.extend(f"  because {r}" for r in x.reasons)
    rank = f", rank {rec.rank}" if rec.method not in ("linear", "svd") else ""  # svd: in _params
    lines.append(f"recommendation: {_params(x)}{rank}")
    lines.extend(f"  {r}" for r in rec.reasons)
    return _lines(lines)


def _vec(values, n: int = 8) -> str:
    head = " ".join(f"{v:.3g}" for v in values[:n])
    return head + (f" … ({len(values)} values)" if len(values) > n else "")


def merged_text(report: MergeReport, show_layers: bool = False) -> str:
    s = report.summary()
    methods = ", ".join(f"{m} ×{n}" for m, n in s["methods"].items())
    lines = [
        f"lorascope merge  {' + '.join(str(x) for x in report.sources)}  →  {report.output}",
        f"layers: {s['n_layers']}   methods: {methods}   ranks: {s['ranks']}",
        f"post-merge check: ‖intended − written‖_F/‖intended‖_F  max {s['max_rel_error']:.2e}  "
        f"mean {s['mean_rel_error']:.2e}   read back: {'identical' if s['verified'] else 'not checked'}",
    ]
    if show_layers:
        width = max((len(clean(x.name)) for x in report.layers), default=5)
        lines.append(f"{'layer':<{width}}  method           ranks → rank  rel.err")
        for x in report.layers:
            ranks = "+".join(str(r) for r in x.ranks)
            lines.append(
                f"{clean(x.name):<{width}}  {x.method:<16} {ranks:>7} → {x.rank:<4} {x.rel_error:.2e}"
            )
    lossy = s["lossy_by_method"]
    if lossy:
        lines.append(
            f"lossy by method: {lossy['n_layers']} of {s['n_layers']} layers ({', '.join(lossy['methods'])}) "
            "sparsify ΔW, which makes it full-rank, and are written at a LoRA rank: they lose "
            f"max {100 * lossy['max_rel_error']:.1f} %, mean {100 * lossy['mean_rel_error']:.1f} % of it "
            "(reported, not checked; set --max-error to check, or raise --rank to keep more)"
        )
    over = report.over_max_error
    if over:
        worst = max((x for x in report.layers if x.name in set(over)), key=lambda x: x.rel_error)
        limit = report.tolerance(worst)
        lines.append(
            f"LOSSY: {len(over)} of {s['n_layers']} layers lost more than {limit:g} of the update "
            f"their method intended (worst {worst.name}: {worst.rel_error:.3g}, {worst.method} at rank "
            f"{worst.rank}); the adapter was written, but it is not that merge: raise the rank (or "
            "use linear), or accept it with a larger --max-error"
        )
    lines.extend(f"note: {n}" for n in report.notes)
    return _lines(lines)


def to_markdown(report: MergeAuditReport, show_layers: bool = True) -> str:
    """The merge-audit report as Markdown (what `--markdown` prints and `--output-dir` writes as
    merge_audit.md): summary, per-layer table, layers in one adapter only, the merge commands."""
    a, b = report.sources
    s = report.summary
    out = [
        "# lorascope merge-audit",
        "",
        f"- first: {md_code(a['path'])}",
        f"- second: {md_code(b['path'])}",
        f"- shared layers: {s['n_shared']}; only in first: {len(report.only[0])}; "
        f"only in second: {len(report.only[1])}",
        f"- overall verdict: **{s['overall']}** ("
        + ", ".join(f"{k} {n}" for k, n in s["verdicts"].items())
        + ")",
        f"- norm-weighted: overlap above chance {s['weighted_overlap_excess']:.3f}, cosine "
        f"{s['weighted_cosine']:+.3f}, agreement {s['weighted_agreement']:+.2f}, "
        f"‖ΔW‖ totals {s['total_norms'][0]:.3g} / {s['total_norms'][1]:.3g}",
        "",
        "Verdicts are about weight space, not accuracy: evaluate the merged adapter.",
    ]
    if show_layers and report.layers:
        out += ["", "## Layers", "", _MD_HEAD, "|" + "---|" * 10]
        out += [_md_row(x) for x in report.layers]
        out += [
            "",
            "overlap: mean cos² of the principal angles (left+right)/2, chance level in brackets; "
            "sign: TIES sign-conflict rate (0.5 = unrelated)",
        ]
    for i, which in enumerate(("first", "second")):
        if report.only[i]:
            out += ["", f"## Only in the {which} adapter", ""]
            out += [f"- {md_code(n)}" for n in report.only[i]]
    plan = report.plan()
    call = plan.peft.get("call", {})
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in call.items())
    out += [
        "",
        "## Merge",
        "",
        "As recommended: `lorascope merge-audit A B --plan plan.json && "
        "lorascope merge A B --plan plan.json -o merged/`",
        "",
        *[f"**{md_text(n)}**\n" for n in plan.notes if n.startswith("lossy:")],
        f"Closest PEFT call: {md_code(f'model.add_weighted_adapter({args})')}",
    ]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {md_text(n)}" for n in report.notes]
    return "\n".join(out) + "\n"


_MD_HEAD = (
    "| layer | r1/r2 | ratio | cos | overlap (chance) | agree | conf | sign | verdict | recommendation |"
)


def _md_row(x: LayerPair) -> str:
    p = x.metrics
    ratio = f"{p.magnitude_ratio:.2f}" if p.magnitude_ratio is not None else "inf"
    sign = f"{p.sign_conflict:.2f}" if p.sign_conflict is not None else "-"
    cells = (
        md_code(x.name),
        f"{x.info1.rank}/{x.info2.rank}",
        ratio,
        f"{p.cosine:+.3f}",
        f"{p.overlap:.3f} ({p.chance:.3f})",
        f"{p.agreement:+.2f}",
        str(p.n_conflicting),
        sign,
        x.verdict,
        md_text(_params(x)),
    )
    return "| " + " | ".join(cells) + " |"
