"""Markdown views of a seed's bench.json and of bench_aggregate.json (untrusted names cleaned)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..textsafe import md_code, md_text


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _delta(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def seed_md(doc: Mapping[str, Any]) -> str:
    p = doc["probe"]
    lines = [
        f"# lorascope bench: seed {doc['seed']}",
        "",
        f"model {md_code(doc['model'])}, status **{doc['status']}**",
        "",
        f"probe: r={p['rank']}, {p['params']:,} LoRA params ({p['trainable_params']:,} trainable), "
        f"accuracy {_acc(p['accuracy'])} on {p['n_eval']} held-out examples",
        "",
    ]
    if doc["compressed"]:
        lines += [
            "| variant | rank | LoRA params | accuracy | Δ vs probe | fewer LoRA params | fewer trainable "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in doc["compressed"].items():
            if r.get("accuracy") is None:
                lines.append(f"| {md_text(name)} | – | – | – | – | – | – | {r.get('status', '')} |")
                continue
            rank = str(r["rank"]) if r["rank_min"] == r["rank_max"] else f"{r['rank_min']}–{r['rank_max']}"
            lines.append(
                f"| {md_text(name)} | {rank} | {r['params']:,} | {_acc(r['accuracy'])} | "
                f"{_delta(r['delta_vs_probe'])} | {_pct(r['param_reduction'])} | "
                f"{_pct(r['param_reduction_trainable'])} | {r['verdict']} |"
            )
    lines += ["", *(f"- {md_text(n)}" for n in doc["summary"]["notes"])]
    return "\n".join(lines).rstrip() + "\n"


def aggregate_md(agg: Mapping[str, Any]) -> str:
    v = agg["validation_classification"]
    pol = agg["safety_policy"]
    lines = [
        "# lorascope bench: aggregate",
        "",
        f"seeds: {agg['n_seeds']} ({agg['n_seeds_evaluated']} evaluated); validation level **{v['level']}** "
        f"({md_text(v['rationale'])})",
        f"policy: pass rate ≥ {pol['pass_rate_min']}, worst-seed Δ ≥ {pol['worst_delta_min']} "
        f"(a seed passes when Δ ≥ {pol['tolerance']})",
        "",
    ]
    base = agg["probe_baseline"]
    if base:
        lines += [
            f"probe accuracy: {_acc(base['accuracy_mean'])} ± {base['accuracy_std']:.4f} "
            f"(min {_acc(base['accuracy_min'])}, max {_acc(base['accuracy_max'])})",
            "",
        ]
    lines += [
        "| variant | mean rank (layers, seeds) | accuracy mean ± std | Δ mean | Δ worst | pass rate "
        "| fewer LoRA params | fewer trainable | compliant |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in agg["variant_results"].items():
        c = agg["policy_compliance"][name]
        lines.append(
            f"| {md_text(name)} | {r['rank_mean']:.1f} | "
            f"{_acc(r['accuracy_mean'])} ± {r['accuracy_std']:.4f} | "
            f"{_delta(r['delta_mean'])} | {_delta(r['delta_worst'])} | {r['pass_count']}/{r['n_seeds']} | "
            f"{_pct(r['param_reduction_mean'])} | {_pct(r['param_reduction_trainable_mean'])} | "
            f"{'yes' if c['policy_compliant'] else 'no'} |"
        )
    best = agg["best_compression"]
    lines.append("")
    if best:
        lines.append(
            f"best compliant compression: **{md_text(best['variant'])}**, "
            f"{_pct(best['param_reduction'])} fewer "
            f"LoRA factor parameters ({_pct(best['param_reduction_trainable'])} of all trainable), "
            f"worst-seed Δ {_delta(best['delta_worst'])}"
        )
    else:
        lines.append("no variant is policy-compliant")
    t = agg.get("timing")
    if t:
        lines += [
            "",
            f"wall time {t['wall_s']:.0f} s: training {t['train_s']:.0f} s, evaluation {t['eval_s']:.0f} s, "
            f"other {t['overhead_s']:.0f} s ({_pct(t['overhead_share'])})",
        ]
    return "\n".join(lines) + "\n"
