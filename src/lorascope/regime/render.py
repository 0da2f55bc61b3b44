"""Text and markdown renderings of the regime results (the JSON forms are their `to_json`).

Paths, run ids and labels come from the user's files: text lines pass through `textsafe.clean`,
markdown cells through `textsafe.md_text`, so no file name can forge a line or a table cell.
"""

from __future__ import annotations

from ..textsafe import clean, md_text
from .classifiers import CLASSIFIERS
from .features import FeatureTable
from .fit import FitReport
from .model import Classification


def _g(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def features_text(table: FeatureTable) -> str:
    names = list(table.config.needed)
    lines = [
        f"early window: step ≤ {table.config.early_frac:g} × each run's last step "
        f"(≥ {table.config.min_records} geometry records)",
        f"{len(table.kept)} run(s) with features, {len(table.excluded)} excluded",
    ]
    for row in table.rows:
        head = f"{clean(row.path)}  run {clean(row.run_id)}"
        if row.excluded:
            lines.append(f"{head}  EXCLUDED: {clean(row.excluded)}")
            continue
        lines.append(f"{head}  {row.n_records} records, window end step {row.window_end}")
        lines += [f"    {n:<26} {_g(row.values[n], '.6g')}" for n in names]
    return "\n".join(lines) + "\n"


def excluded_lines(table: FeatureTable) -> list[str]:
    """stderr lines: each excluded run with its reason, each unfinished run (no run_end event)."""
    out = [f"excluded: {clean(r.path)}: {clean(r.excluded)}" for r in table.excluded]
    out += [
        f"warning: {clean(r.path)}: no run_end event (still running?): its window is "
        f"{table.config.early_frac:g} × the last step logged so far (window end step {r.window_end})"
        for r in table.kept
        if not r.finished
    ]
    return out


def fit_markdown(r: FitReport) -> str:
    doc = r.to_dict()
    out = [
        "# Regime from early training geometry",
        "",
        f"{doc['n_runs']} runs in {doc['n_groups']} groups (`{md_text(r.config.group_key)}`), "
        f"{len(r.classes)} regimes ({', '.join(md_text(c) for c in r.classes)}); "
        f"H(regime) = {r.entropy:.4f} nats.  Early window: step ≤ {r.config.features.early_frac:g} × "
        "the run's last step.  Leave-one-group-out; permutation p-values from "
        f"{r.config.permutations} label shuffles.",
        "",
        "## Leave-one-group-out accuracy",
        "",
        "| feature set | "
        + " | ".join(f"{k} (p)" for k in CLASSIFIERS)
        + " | cond. entropy (logistic) | CV MI (nats) |",
        "|---|" + "---|" * (len(CLASSIFIERS) + 2),
    ]
    for name, s in doc["sets"].items():
        cells = [
            f"{c['accuracy']:.1%} ({c['n_correct']}/{c['n']}, p={_g(c['p_value'], '.3g')})"
            for c in (s["classifiers"][k] for k in CLASSIFIERS)
        ]
        ce = s["conditional_entropy"]
        mi = s["mutual_information"]["cv_logistic_nats"]
        out.append(
            f"| {name} | " + " | ".join(cells) + f" | {_g(ce['logistic_nats'])} nats "
            f"({_g(ce['logistic_reduction'], '.1%')} less than H) | {_g(mi)} |"
        )
    out += [
        "",
        "## McNemar between feature sets",
        "",
        "| classifier | first | second | b | c | χ² | p (χ²) | p (exact) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, rows in doc["mcnemar"].items():
        for m in rows:
            out.append(
                f"| {kind} | {m['first']} | {m['second']} | {m['b']} | {m['c']} | {m['chi2']:.3f} | "
                f"{m['p_chi2']:.3g} | {m['p_exact']:.3g} |"
            )
    out += [
        "",
        "## Summed per-feature mutual information (not a joint MI)",
        "",
        "| feature set | raw | shuffled mean | net |",
        "|---|---|---|---|",
    ]
    for name, s in doc["sets"].items():
        sm = s["mutual_information"]["summed_marginal"]
        out.append(f"| {name} | {sm['raw']:.4f} | {sm['null_mean']:.4f} | {sm['net']:.4f} |")
    out += [
        "",
        "## DFA of the spectral-complexity series",
        "",
        "| regime | n | α mean | α sd | α of differences mean |",
        "|---|---|---|---|---|",
    ]
    dfa = doc["dfa"]
    for lab in r.classes:
        a, d = dfa["by_regime"][lab], dfa["differences"]["by_regime"][lab]
        out.append(f"| {md_text(lab)} | {a['n']} | {_g(a['mean'])} | {_g(a['std'])} | {_g(d['mean'])} |")
    an, ad = dfa["anova"], dfa["differences"]["anova"]
    out += [
        "",
        f"One-way ANOVA of α by regime: F = {_g(an['f'])}, p = {_g(an['p'], '.3g')}; "
        f"of α on first differences (control): F = {_g(ad['f'])}, p = {_g(ad['p'], '.3g')}.",
        "",
        "## Confusion matrices (rows: true regime, columns: predicted)",
    ]
    for name, s in doc["sets"].items():
        for kind in CLASSIFIERS:
            out += [
                "",
                f"{name}, {kind}:",
                "",
                "| true \\ predicted | " + " | ".join(md_text(c) for c in r.classes) + " |",
            ]
            out.append("|---|" + "---|" * len(r.classes))
            for lab, row in zip(r.classes, s["classifiers"][kind]["confusion"], strict=True):
                out.append(f"| {md_text(lab)} | " + " | ".join(str(v) for v in row) + " |")
    out += ["", "## Excluded runs", ""]
    out += [f"- {md_text(e['path'])}: {md_text(e['reason'])}" for e in doc["excluded"]] or ["None."]
    out += [
        "",
        f"Model (`{doc['model']}`): feature set {r.model.feature_set}, fitted on all {r.model.n_runs} runs.",
    ]
    return "\n".join(out) + "\n"


def fit_text(r: FitReport, out_dir: str) -> str:
    doc = r.to_dict()
    lines = [
        f"{doc['n_runs']} runs, {doc['n_groups']} groups, {len(r.classes)} regimes; wrote {clean(out_dir)}"
    ]
    for name, s in doc["sets"].items():
        accs = "  ".join(
            f"{k} {s['classifiers'][k]['accuracy']:.1%} (p={_g(s['classifiers'][k]['p_value'], '.3g')})"
            for k in CLASSIFIERS
        )
        lines.append(f"  {name:<11} {accs}")
    an = doc["dfa"]["anova"]
    lines.append(f"  DFA α by regime: F = {_g(an['f'])}, p = {_g(an['p'], '.3g')}")
    return "\n".join(lines) + "\n"


def classify_text(c: Classification) -> str:
    lines = [
        f"{clean(c.path)}  run {clean(c.run_id)}: regime {clean(c.regime)} "
        f"(logistic p = {c.probabilities[c.regime]:.3f}; ridge {clean(c.predictions['ridge'])}, "
        f"nearest centroid {clean(c.predictions['centroid'])})",
        f"  features ({c.feature_set}, window end step {c.window_end}):",
    ]
    lines += [f"    {f:<26} {v:.6g}" for f, v in c.features.items()]
    lines.append("  regime          p(logistic)  ridge score  centroid distance (sd units)")
    for cls in c.probabilities:
        lines.append(
            f"  {clean(cls):<15} {c.probabilities[cls]:>11.3f}  {c.ridge_scores[cls]:>11.3f}  "
            f"{c.distances[cls]:>10.3f}"
        )
    for f, v, lo, hi in c.out_of_range:
        lines.append(
            f"warning: {f} = {v:.6g} is outside the training range [{lo:.6g}, {hi:.6g}]: "
            "the prediction extrapolates beyond every training run"
        )
    return "\n".join(lines) + "\n"
