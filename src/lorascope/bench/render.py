"""Markdown views of a seed's result (bench.md) and of the aggregate (bench_aggregate.md); untrusted
names cleaned."""

from __future__ import annotations

from ..textsafe import md_code, md_text
from .results import BenchResult, SeedResult


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _acc(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _delta(x: float | None) -> str:
    return "–" if x is None else f"{x:+.4f}"


def seed_md(seed: SeedResult) -> str:
    p = seed.probe
    model = seed.context.model if seed.context is not None else "?"
    lines = [
        f"# lorascope bench: seed {seed.seed}",
        "",
        f"model {md_code(model)}, status **{seed.status}**",
        "",
        f"probe: r={p.rank}, {p.params:,} LoRA params ({p.trainable_params:,} trainable), "
        f"accuracy {_acc(p.accuracy)} on {p.n_eval} held-out examples",
        "",
    ]
    if seed.compressed:
        lines += [
            "| variant | rank | LoRA params | accuracy | Δ vs probe | fewer LoRA params | fewer trainable "
            "| verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in seed.compressed.items():
            if r.accuracy is None:
                lines.append(f"| {md_text(name)} | – | – | – | – | – | – | {r.status} |")
                continue
            rank = str(r.rank) if r.rank_min == r.rank_max else f"{r.rank_min}–{r.rank_max}"
            lines.append(
                f"| {md_text(name)} | {rank} | {r.params:,} | {_acc(r.accuracy)} | "
                f"{_delta(r.delta_vs_probe)} | {_pct(r.param_reduction)} | "
                f"{_pct(r.param_reduction_trainable)} | {r.verdict} |"
            )
    if seed.best_compression:
        lines += ["", f"best compression (tie-break: docs/bench.md): **{md_text(seed.best_compression)}**"]
    lines += ["", *(f"- {md_text(n)}" for n in seed.notes)]
    return "\n".join(lines).rstrip() + "\n"


def aggregate_md(agg: BenchResult) -> str:
    v, pol = agg.validation, agg.policy
    lines = [
        "# lorascope bench: aggregate",
        "",
        f"seeds: {agg.n_seeds} ({agg.n_seeds_evaluated} evaluated); validation level **{v.level}** "
        f"({md_text(v.rationale)})",
        f"policy: pass rate ≥ {pol.pass_rate_min}, worst-seed Δ ≥ {pol.worst_delta_min} "
        f"(a seed passes when Δ ≥ {pol.tolerance})",
        "",
    ]
    if agg.config is not None:
        lines[2:2] = [f"model {md_code(agg.config.model.label())}, config {md_code(agg.config.source)}", ""]
    base = agg.probe_baseline
    if base:
        lines += [
            f"probe accuracy: {_acc(base.mean)} ± {base.std:.4f} "
            f"(min {_acc(base.min)}, max {_acc(base.max)})",
            "",
        ]
    lines += [
        "| variant | mean rank (layers, seeds) | accuracy mean ± std | Δ mean | Δ worst | pass rate "
        "| fewer LoRA params | fewer trainable | compliant |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in agg.variant_results.items():
        c = agg.policy_compliance[name]
        lines.append(
            f"| {md_text(name)} | {r.rank_mean:.1f} | "
            f"{_acc(r.accuracy_mean)} ± {r.accuracy_std:.4f} | "
            f"{_delta(r.delta_mean)} | {_delta(r.delta_worst)} | {r.pass_count}/{r.n_seeds} | "
            f"{_pct(r.param_reduction_mean)} | {_pct(r.param_reduction_trainable_mean)} | "
            f"{'yes' if c.policy_compliant else 'no'} |"
        )
    best = agg.best_compression
    lines.append("")
    if best:
        lines.append(
            f"best compliant compression: **{md_text(best.variant)}**, "
            f"{_pct(best.param_reduction)} fewer "
            f"LoRA factor parameters ({_pct(best.param_reduction_trainable)} of all trainable), "
            f"worst-seed Δ {_delta(best.delta_worst)}"
        )
    else:
        lines.append("no variant is policy-compliant")
    t = agg.timing
    if t:
        lines += [
            "",
            f"wall time {t.wall_s:.0f} s (from process start): training {t.train_s:.0f} s, "
            f"evaluation {t.eval_s:.0f} s, other {t.overhead_s:.0f} s ({_pct(t.overhead_share)})",
        ]
    return "\n".join(lines) + "\n"
