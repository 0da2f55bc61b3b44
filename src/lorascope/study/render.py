"""study.md: the tables of study.json as Markdown, beside the Study 14 reference; a short text
summary for the terminal.  Sources and names are untrusted text (textsafe)."""

from __future__ import annotations

from typing import Any

from ..textsafe import clean, md_code, md_text
from .tables import FEW_ADAPTERS


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


def to_markdown(t: dict[str, Any]) -> str:
    c, ref = t["counts"], t["reference"]
    lines = ["# lorascope study", ""]
    lines.append(
        f"{c['adapters']} adapters audited ({c['layers']} layers, {c['architectures']} architecture "
        f"families), {c['failed']} failed, {t['dead']['n']} dead.  Formats: "
        + ", ".join(f"{md_text(k)} {v}" for k, v in c["formats"].items())
        + ".  Reference: "
        + f"{ref['name']} ({ref['n_adapters']} adapters, {ref['n_layers']} layers)."
    )
    if c["failure_kinds"]:
        lines.append(
            "Failures: " + ", ".join(f"{md_text(k)} {v}" for k, v in c["failure_kinds"].items()) + "."
        )
    u, ru = t["utilisation"], ref["utilisation"]
    lines += ["", "## Utilisation (stable rank / r, mean over an adapter's live layers)", ""]
    keys = ["mean", "median", "std", "p75", "p90", "max"]
    lines += _table(
        ["", *keys, "share > 0.34"],
        [
            ["this study", *(_f(u.get(k)) for k in keys), _pct(u.get("share_above_0.34"))],
            [ref["name"], *(_f(ru.get(k)) for k in keys), _pct(ref["share_above_0.34"])],
        ],
    )
    lines += ["", "## By nominal rank", ""]
    ref_rank = ref["by_rank"]
    rows = []
    for row in t["by_rank"]:
        n, mean, med = ref_rank.get(str(row["rank"]), (None, None, None))
        rows.append(
            [str(row["rank"]), str(row["n"]), _f(row["mean"]), _f(row["median"]), _f(n), _f(mean), _f(med)]
        )
    lines += _table(["r", "N", "mean", "median", "ref N", "ref mean", "ref median"], rows)
    lines += ["", "## Rank vs utilisation", ""]
    cor = t["correlation"]
    rows = []
    for name in ("pearson", "spearman"):
        e = cor[name]
        ci = "–" if e["ci95"] is None else f"[{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"
        rows.append([name, _f(e["r"]), ci, _f(ref["pearson"]) if name == "pearson" else "–"])
    lines += _table(["", "r", f"95 % CI ({cor['bootstrap']} bootstrap)", "reference"], rows)
    if cor["n"] < FEW_ADAPTERS:
        lines += [
            "",
            f"**Warning:** {cor['n']} live adapters (fewer than {FEW_ADAPTERS}): a bootstrap of so few "
            "resamples the same handful of points, so these intervals are not reliable.",
        ]
    lines += ["", "## By module type", ""]
    rows = [
        [k, str(v["layers"]), str(v["n"]), _f(v["mean"]), _f(v["median"]), _f(ref["by_module_type"].get(k))]
        for k, v in t["by_module_type"].items()
    ]
    lines += _table(["type", "layers", "adapters", "mean", "median", "ref mean"], rows)
    lines += ["", "## By architecture family", ""]
    rows = [
        [md_text(r["architecture"]), str(r["n"]), str(r["layers"]), _f(r["mean"]), _f(r["median"])]
        for r in t["by_architecture"]
    ]
    lines += _table(["family", "adapters", "layers", "mean", "median"], rows)
    lines += ["", "## By base model (from the adapter's config or metadata)", ""]
    rows = [
        [md_code(r["base_model"]), str(r["n"]), str(r["layers"]), _f(r["mean"]), _f(r["median"])]
        for r in t["by_base_model"]
    ]
    lines += _table(["base model", "adapters", "layers", "mean", "median"], rows)
    lines += _compression_section(t)
    for title, key in (("Most utilised", "most_utilised"), ("Least utilised", "least_utilised")):
        lines += ["", f"## {title}", ""]
        rows = [[md_code(r["source"]), str(r["nominal_rank"]), _f(r["utilisation"])] for r in t[key]]
        lines += _table(["source", "r", "utilisation"], rows)
    if t["dead"]["sources"]:
        lines += ["", "## Dead adapters (every layer ΔW = 0)", ""]
        lines += [f"- {md_code(s)}" for s in t["dead"]["sources"]]
    lines += _failures_section(t)
    return "\n".join(lines) + "\n"


def _failures_section(t: dict[str, Any]) -> list[str]:
    if not t["failures"]:
        return []
    n = t["counts"]["failed"]
    lines = ["", "## Failed adapters", ""]
    rows = [[md_code(f["source"]), md_text(f["kind"]), md_text(f["reason"])] for f in t["failures"]]
    lines += _table(["source", "kind", "reason"], rows)
    if n > len(rows):
        lines += ["", f"The first {len(rows)} of {n} by source; every one is in failures.jsonl."]
    return lines


def _compression_section(t: dict[str, Any]) -> list[str]:
    ref = t["reference"]["energy_fraction@0.9"]
    lines = ["", "## Compression potential (energy rank k@τ as a share of r)", ""]
    rows = []
    for key, v in t["compression"].items():
        r = ref if key == "energy_fraction@0.9" else {}
        rows.append(
            [
                key.split("@")[1],
                _pct(v.get("median")),
                _pct(v.get("p90")),
                _pct(r.get("median")),
                _pct(r.get("p90")),
            ]
        )
    lines += _table(["τ", "median", "p90", "ref median", "ref p90"], rows)
    util, frac = t["layers"]["utilisation"], t["layers"]["energy_fraction@0.9"]
    lines += [
        "",
        f"Per adapter: the median over its live layers.  Over all {util.get('n', 0)} live layers: "
        f"utilisation median {_f(util.get('median'))}, k@0.9 / r median {_pct(frac.get('median'))}, "
        f"p90 {_pct(frac.get('p90'))}.",
    ]
    above = t["layers"]["above_one"]
    if above["utilisation"] or above["energy_rank@0.9"]:
        lines += [
            "",
            f"Note: {above['utilisation']} layers have utilisation above 1 and {above['energy_rank@0.9']} "
            f"have k@0.9 above r, in {above['adapters']} adapters.  For "
            "LoHa and LoKr layers r is the allocated lora_dim, while ΔW is a Hadamard or Kronecker "
            "product whose rank can reach r1·r2 or rank(W1)·rank(W2): there utilisation and k@τ / r "
            "are per allocated dimension, not a share of a maximum, and can exceed 1.",
        ]
    return lines


def to_text(t: dict[str, Any], out: str, seconds: float, skipped: int = 0) -> str:
    c, u = t["counts"], t["utilisation"]
    before = f", {skipped} done before (--resume)" if skipped else ""
    line = (
        f"studied {c['adapters']} adapters ({c['layers']} layers) in {seconds:.1f} s{before}; "
        f"{c['failed']} failed, {t['dead']['n']} dead"
    )
    if u.get("n"):
        line += f"; utilisation mean {u['mean']:.3f}, median {u['median']:.3f}"
    return clean(line) + f"\ntables: {clean(out)}/study.md, {clean(out)}/study.json\n"
