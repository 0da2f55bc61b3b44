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


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def _accuracy_md(doc: dict) -> list[str]:
    rows = []
    for name, s in doc["sets"].items():
        cells = [
            f"{c['accuracy']:.1%} ({c['n_correct']}/{c['n']}, p={_g(c['p_value'], '.3g')})"
            for c in (s["classifiers"][k] for k in CLASSIFIERS)
        ]
        ce = s["conditional_entropy"]
        ce_cell = f"{_g(ce['logistic_nats'])} nats (1 − CE/H = {_g(ce['logistic_reduction'], '.1%')})"
        rows.append([name, *cells, ce_cell, _g(s["mutual_information"]["cv_logistic_nats"])])
    head = ["feature set", *(f"{k} (p)" for k in CLASSIFIERS), "cond. entropy (logistic)", "CV MI (nats)"]
    return ["## Leave-one-group-out accuracy", "", *_md_table(head, rows)]


def _tests_md(doc: dict) -> list[str]:
    mc = [
        [
            kind,
            m["first"],
            m["second"],
            str(m["b"]),
            str(m["c"]),
            f"{m['chi2']:.3f}",
            f"{m['p_chi2']:.3g}",
            f"{m['p_exact']:.3g}",
        ]
        for kind, rows in doc["mcnemar"].items()
        for m in rows
    ]
    mi = [
        [name, f"{sm['raw']:.4f}", f"{sm['null_mean']:.4f}", f"{sm['net']:.4f}"]
        for name, sm in ((n, s["mutual_information"]["summed_marginal"]) for n, s in doc["sets"].items())
    ]
    return [
        "## McNemar between feature sets",
        "",
        *_md_table(["classifier", "first", "second", "b", "c", "χ²", "p (χ²)", "p (exact)"], mc),
        "",
        "## Summed per-feature mutual information (not a joint MI)",
        "",
        *_md_table(["feature set", "raw", "shuffled mean", "net"], mi),
    ]


def _dfa_md(doc: dict, classes: tuple[str, ...]) -> list[str]:
    dfa = doc["dfa"]
    rows = []
    for lab in classes:
        a, d = dfa["by_regime"][lab], dfa["differences"]["by_regime"][lab]
        rows.append([md_text(lab), str(a["n"]), _g(a["mean"]), _g(a["std"]), _g(d["mean"])])
    an, ad = dfa["anova"], dfa["differences"]["anova"]
    return [
        "## DFA of the spectral-complexity series",
        "",
        *_md_table(["regime", "n", "α mean", "α sd", "α of differences mean"], rows),
        "",
        f"One-way ANOVA of α by regime: F = {_g(an['f'])}, p = {_g(an['p'], '.3g')}; "
        f"of α on first differences (control): F = {_g(ad['f'])}, p = {_g(ad['p'], '.3g')}.",
    ]


def _confusion_md(doc: dict, classes: tuple[str, ...]) -> list[str]:
    out = ["## Confusion matrices (rows: true regime, columns: predicted)"]
    head = ["true \\ predicted", *(md_text(c) for c in classes)]
    for name, s in doc["sets"].items():
        for kind in CLASSIFIERS:
            rows = [
                [md_text(lab), *(str(v) for v in row)]
                for lab, row in zip(classes, s["classifiers"][kind]["confusion"], strict=True)
            ]
            out += ["", f"{name}, {kind}:", "", *_md_table(head, rows)]
    return out


def fit_markdown(r: FitReport) -> str:
    doc = r.to_dict()
    intro = (
        f"{doc['n_runs']} runs in {doc['n_groups']} groups (`{md_text(r.config.group_key)}`), "
        f"{len(r.classes)} regimes ({', '.join(md_text(c) for c in r.classes)}); "
        f"H(regime) = {r.entropy:.4f} nats.  Early window: step ≤ {r.config.features.early_frac:g} × "
        "the run's last step.  Leave-one-group-out; permutation p-values from "
        f"{r.config.permutations} label shuffles."
    )
    excluded = [f"- {md_text(e['path'])}: {md_text(e['reason'])}" for e in doc["excluded"]] or ["None."]
    model = (
        f"Model (`{doc['model']}`): feature set {r.model.feature_set}, fitted on all {r.model.n_runs} runs."
    )
    parts = [
        ["# Regime from early training geometry", "", intro],
        _accuracy_md(doc),
        _tests_md(doc),
        _dfa_md(doc, r.classes),
        _confusion_md(doc, r.classes),
        ["## Excluded runs", "", *excluded],
        [model],
    ]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


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
