"""study.md: the study's tables (`StudyTables`) as Markdown, beside the Study 14 reference; a short
text summary for the terminal.  Sources, names and reasons are untrusted text (textsafe)."""

from __future__ import annotations

from typing import Any

from ..textsafe import clean, md_code, md_text
from .model import THRESHOLDS, Group, StudyTables

FEW_ADAPTERS = 10  # below this many live adapters the bootstrap intervals are flagged as unreliable


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def to_markdown(t: StudyTables) -> str:
    lines = ["# lorascope study", ""]
    lines += _summary(t)
    lines += _utilisation_section(t)
    lines += _correlation_section(t)
    lines += _groups_section(t)
    lines += _compression_section(t)
    for title, rows in (("Most utilised", t.most_utilised), ("Least utilised", t.least_utilised)):
        lines += ["", f"## {title}", ""]
        cells = [[md_code(e.source), str(e.nominal_rank), _f(e.utilisation)] for e in rows]
        lines += _table(["source", "r", "utilisation"], cells)
    if t.dead:
        lines += ["", "## Dead adapters (every layer ΔW = 0)", ""]
        lines += [f"- {md_code(s)}" for s in t.dead]
    lines += _failures_section(t)
    return "\n".join(lines) + "\n"


def _summary(t: StudyTables) -> list[str]:
    c, ref = t.counts, t.reference
    lines = [
        f"{c.adapters} adapters audited ({c.layers} layers, {c.architectures} architecture "
        f"families), {c.failed} failed, {len(t.dead)} dead.  Formats: "
        + ", ".join(f"{md_text(k)} {v}" for k, v in c.formats.items())
        + ".  Reference: "
        + f"{ref['name']} ({ref['n_adapters']} adapters, {ref['n_layers']} layers)."
    ]
    if c.failure_kinds:
        lines.append("Failures: " + ", ".join(f"{md_text(k)} {v}" for k, v in c.failure_kinds.items()) + ".")
    return lines


def _utilisation_section(t: StudyTables) -> list[str]:
    u, ref = t.utilisation, t.reference
    lines = ["", "## Utilisation (stable rank / r, mean over an adapter's live layers)", ""]
    keys = ["mean", "median", "std", "p75", "p90", "max"]
    share = u.share_above[1] if u.share_above is not None else None
    lines += _table(
        ["", *keys, "share > 0.34"],
        [
            ["this study", *(_f(getattr(u, k)) for k in keys), _pct(share)],
            [ref["name"], *(_f(ref["utilisation"].get(k)) for k in keys), _pct(ref["share_above_0.34"])],
        ],
    )
    lines += ["", "## By nominal rank", ""]
    rows = []
    for g in t.by_rank:
        n, mean, med = ref["by_rank"].get(str(g.name), (None, None, None))
        rows.append([str(g.name), str(g.n), _f(g.mean), _f(g.median), _f(n), _f(mean), _f(med)])
    return lines + _table(["r", "N", "mean", "median", "ref N", "ref mean", "ref median"], rows)


def _correlation_section(t: StudyTables) -> list[str]:
    cor = t.correlation
    lines = ["", "## Rank vs utilisation", ""]
    rows = []
    for name, e in (("pearson", cor.pearson), ("spearman", cor.spearman)):
        ci = "–" if e.ci95 is None else f"[{e.ci95[0]:.3f}, {e.ci95[1]:.3f}]"
        rows.append([name, _f(e.r), ci, _f(t.reference["pearson"]) if name == "pearson" else "–"])
    lines += _table(["", "r", f"95 % CI ({cor.bootstrap} bootstrap)", "reference"], rows)
    if cor.n < FEW_ADAPTERS:
        lines += [
            "",
            f"**Warning:** {cor.n} live adapters (fewer than {FEW_ADAPTERS}): a bootstrap of so few "
            "resamples the same handful of points, so these intervals are not reliable.",
        ]
    return lines


def _groups_section(t: StudyTables) -> list[str]:
    ref_types = t.reference["by_module_type"]
    lines = ["", "## By module type", ""]
    rows = [
        [str(g.name), str(g.layers), str(g.n), _f(g.mean), _f(g.median), _f(ref_types.get(g.name))]
        for g in t.by_module_type
    ]
    lines += _table(["type", "layers", "adapters", "mean", "median", "ref mean"], rows)

    def table(groups: tuple[Group, ...], head: str, cell) -> list[str]:
        rows = [[cell(g.name), str(g.n), str(g.layers), _f(g.mean), _f(g.median)] for g in groups]
        return _table([head, "adapters", "layers", "mean", "median"], rows)

    lines += ["", "## By architecture family", ""]
    lines += table(t.by_architecture, "family", md_text)
    lines += ["", "## By base model (from the adapter's config or metadata)", ""]
    return lines + table(t.by_base_model, "base model", md_code)


def _failures_section(t: StudyTables) -> list[str]:
    if not t.failures:
        return []
    n = t.counts.failed
    lines = ["", "## Failed adapters", ""]
    rows = [[md_code(f.source), md_text(f.kind), md_text(f.reason)] for f in t.failures]
    lines += _table(["source", "kind", "reason"], rows)
    if n > len(rows):
        lines += ["", f"The first {len(rows)} of {n} by source; every one is in failures.jsonl."]
    return lines


def _compression_section(t: StudyTables) -> list[str]:
    ref = t.reference["energy_fraction@0.9"]
    lines = ["", "## Compression potential (energy rank k@τ as a share of r)", ""]
    rows = []
    for tau, s in t.compression.items():
        r = ref if tau == THRESHOLDS[0] else {}
        rows.append([f"{tau:g}", _pct(s.median), _pct(s.p90), _pct(r.get("median")), _pct(r.get("p90"))])
    lines += _table(["τ", "median", "p90", "ref median", "ref p90"], rows)
    util, frac = t.layer_utilisation, t.layer_energy_fraction
    lines += [
        "",
        f"Per adapter: the median over its live layers.  Over all {util.n} live layers: "
        f"utilisation median {_f(util.median)}, k@0.9 / r median {_pct(frac.median)}, "
        f"p90 {_pct(frac.p90)}.",
    ]
    above = t.above_one
    if above.utilisation or above.energy_rank:
        lines += [
            "",
            f"Note: {above.utilisation} layers have utilisation above 1 and {above.energy_rank} "
            f"have k@0.9 above r, in {above.adapters} adapters.  For "
            "LoHa and LoKr layers r is the allocated lora_dim, while ΔW is a Hadamard or Kronecker "
            "product whose rank can reach r1·r2 or rank(W1)·rank(W2): there utilisation and k@τ / r "
            "are per allocated dimension, not a share of a maximum, and can exceed 1.",
        ]
    return lines


def to_text(t: StudyTables, out: str, seconds: float, skipped: int = 0) -> str:
    c, u = t.counts, t.utilisation
    before = f", {skipped} done before (--resume)" if skipped else ""
    line = (
        f"studied {c.adapters} adapters ({c.layers} layers) in {seconds:.1f} s{before}; "
        f"{c.failed} failed, {len(t.dead)} dead"
    )
    if u.n:
        line += f"; utilisation mean {u.mean:.3f}, median {u.median:.3f}"
    return clean(line) + f"\ntables: {clean(out)}/study.md, {clean(out)}/study.json\n"
