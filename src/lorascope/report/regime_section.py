"""Regime section: a `regime.json` (`lorascope regime fit`, or its output folder): the features
by regime (one strip-and-box panel per feature), the leave-one-group-out confusion matrices (one
heatmap per feature set and classifier), and the DFA exponents by regime (and on first
differences, the control).  Also `geometry_body(path)`: a run log's geometry series, drawn under
the run section when the log has geometry events.

Read through `fields.Doc`: a hand-edited or truncated regime.json is refused naming the key.
"""

from __future__ import annotations

from typing import Any

from .base import Built, SectionKind
from .fields import Doc
from .html import figure, table
from .inputs import doc_in
from .plot import PALETTE, new_figure, safe, to_svg

CLASSIFIERS = ("ridge", "centroid", "logistic")
MARKERS = "osD^vP*X"


def _read(doc: Any, path: str) -> dict[str, Any]:
    d = Doc(doc, path)
    classes = [str(c) for c in (d.raw("classes") or [])]
    if len(classes) < 2:
        raise d.fail("classes", "a list of ≥ 2 regimes", d.raw("classes"))
    runs = []
    for r in d.objs("runs"):
        feats = r.need("features")
        runs.append(
            {
                "label": r.text("label"),
                "features": {k: feats.num(k, optional=True) for k in feats.data},
                "dfa_alpha": r.num("dfa_alpha", optional=True),
                "dfa_alpha_diff": r.num("dfa_alpha_diff", optional=True),
            }
        )
    sets = {}
    for name in d.need("sets").data:
        s = d.need("sets").need(name)
        cls = s.need("classifiers")
        sets[name] = {
            kind: {"accuracy": cls.need(kind).num("accuracy"), "confusion": cls.need(kind).raw("confusion")}
            for kind in CLASSIFIERS
            if cls.has(kind)
        }
    anova = d.need("dfa").need("anova")
    return {
        "classes": classes,
        "runs": runs,
        "sets": sets,
        "anova": (anova.num("f", True), anova.num("p", True)),
    }


def build(path: str, doc: Any) -> Built:
    doc = doc_in(path, doc, "regime.json")
    data = _read(doc, path)
    facts: list[tuple[str, Any]] = [
        ("runs", len(data["runs"])),
        ("regimes", ", ".join(data["classes"])),
        ("excluded runs", len(doc.get("excluded") or [])),
    ]
    for name, per in data["sets"].items():
        accs = " / ".join(f"{per[k]['accuracy']:.0%}" for k in CLASSIFIERS if k in per)
        facts.append((f"{name} accuracy (ridge / centroid / logistic)", accs))
    facts.append(("DFA α ANOVA F (p)", f"{_g(data['anova'][0])} ({_g(data['anova'][1])})"))
    body = _features_plot(data) + _confusion_plot(data) + _dfa_plot(data)
    return Built(data=doc, facts=facts, body=body)


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _strip(ax: Any, classes: list[str], groups: list[list[float]]) -> None:
    """One column of points per regime (spread sideways by rank, deterministic) over a box plot."""
    present = [(i, g) for i, g in enumerate(groups) if g]
    if present:
        ax.boxplot([g for _, g in present], positions=[i for i, _ in present], widths=0.5, showfliers=False)
    for i, g in present:
        n = len(g)
        xs = [i + (0.25 * (j - (n - 1) / 2) / max(n, 1)) for j in range(n)]
        ax.plot(xs, g, MARKERS[i % len(MARKERS)], color=PALETTE[i % len(PALETTE)], ms=3.5, alpha=0.8)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels([safe(c) for c in classes], rotation=30, fontsize=7)


def _features_plot(data: dict[str, Any]) -> str:
    names = list(dict.fromkeys(k for r in data["runs"] for k in r["features"]))
    if not names:
        return '<p class="missing">No feature values.</p>'
    cols = 4
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = new_figure(
        9.0, 2.6 * rows_n, rows_n, cols, squeeze=False, margins={"bottom": 0.12, "hspace": 0.6}
    )
    classes = data["classes"]
    rows = []
    for n, name in enumerate(names):
        ax = axes[n // cols][n % cols]
        groups = [
            [
                r["features"][name]
                for r in data["runs"]
                if r["label"] == c and r["features"].get(name) is not None
            ]
            for c in classes
        ]
        _strip(ax, classes, groups)
        ax.set_title(safe(name), fontsize=8)
        rows += [
            [name, c, len(g), min(g) if g else None, sum(g) / len(g) if g else None, max(g) if g else None]
            for c, g in zip(classes, groups, strict=True)
        ]
    for n in range(len(names), rows_n * cols):
        axes[n // cols][n % cols].set_visible(False)
    svg = to_svg(fig, "Early-window features by regime", "regime")
    tab = table(
        ["feature", "regime", "runs", "min", "mean", "max"], rows, "Features by regime", collapsed=True
    )
    return figure(svg, "Each run's early-window features by regime (points; box: quartiles)", tab)


def _confusion_plot(data: dict[str, Any]) -> str:
    sets = list(data["sets"])
    classes = data["classes"]
    k = len(classes)
    fig, axes = new_figure(
        9.0,
        2.4 * len(sets) + 0.4,
        len(sets),
        3,
        squeeze=False,
        margins={"left": 0.1, "hspace": 0.5, "bottom": 0.08},
    )
    rows = []
    for i, name in enumerate(sets):
        for j, kind in enumerate(CLASSIFIERS):
            ax = axes[i][j]
            res = data["sets"][name].get(kind)
            if res is None or not isinstance(res["confusion"], list):
                ax.set_visible(False)
                continue
            m = res["confusion"]
            top = max(max(row) for row in m) or 1
            ax.imshow(m, cmap="Blues", vmin=0, vmax=top)
            for a in range(k):
                for b in range(k):
                    ink = "#FFFFFF" if m[a][b] > 0.55 * top else "#000000"  # readable on dark cells
                    ax.text(b, a, str(m[a][b]), ha="center", va="center", fontsize=7, color=ink)
                rows.append([name, kind, classes[a], *m[a]])
            ax.set_title(safe(f"{name}, {kind}: {res['accuracy']:.0%}"), fontsize=8)
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
            ax.set_xticklabels([safe(c) for c in classes], rotation=30, fontsize=6)
            ax.set_yticklabels([safe(c) for c in classes], fontsize=6)
            ax.grid(False)
    svg = to_svg(fig, "Leave-one-group-out confusion matrices", "regime")
    tab = table(
        ["set", "classifier", "true regime", *classes],
        rows,
        "Confusion matrices (rows: true)",
        collapsed=True,
    )
    return figure(svg, "Confusion matrices: rows the true regime, columns the predicted one", tab)


def _dfa_plot(data: dict[str, Any]) -> str:
    classes = data["classes"]
    fig, axes = new_figure(8.0, 3.0, 1, 2, margins={"bottom": 0.2})
    rows = []
    for ax, key, title in (
        (axes[0], "dfa_alpha", "DFA α of spectral complexity"),
        (axes[1], "dfa_alpha_diff", "α of its first differences (control)"),
    ):
        groups = [[r[key] for r in data["runs"] if r["label"] == c and r[key] is not None] for c in classes]
        _strip(ax, classes, groups)
        ax.set_title(title, fontsize=8)
        rows += [
            [title, c, len(g), sum(g) / len(g) if g else None] for c, g in zip(classes, groups, strict=True)
        ]
    svg = to_svg(fig, "DFA exponents by regime", "regime")
    tab = table(["series", "regime", "runs", "mean α"], rows, "DFA exponents by regime")
    return figure(
        svg, "DFA exponent of each run's spectral-complexity series by regime, and of its differences", tab
    )


GEOMETRY_FIELDS = (
    "weight_norm",
    "grad_norm",
    "grad_to_weight_ratio",
    "cos_grad_weight",
    "spectral_complexity",
)


def geometry_body(path: str) -> str:
    """A run log's geometry series (one panel per field), or "" when it logged none."""
    from ..regime import read_run_data

    run = read_run_data(path)
    if not run.geometry:
        return ""
    fig, axes = new_figure(9.0, 3.4, 1, len(GEOMETRY_FIELDS), margins={"wspace": 0.45, "bottom": 0.16})
    rows = []
    window = 0.2 * run.last_step if run.last_step else None  # the default early window
    for ax, name in zip(axes, GEOMETRY_FIELDS, strict=True):
        if window:
            ax.axvspan(0, window, color="#E69F00", alpha=0.15, lw=0)
        pts = [(s, v) for s, v in run.series(name) if v is not None and v == v and abs(v) != float("inf")]
        ax.plot([s for s, _ in pts], [v for _, v in pts], "-", color="#0072B2", lw=1)
        ax.set_title(name.replace("_", " "), fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=6)
    for e in run.geometry:
        rows.append(
            [e.step, *(e.get(n) if isinstance(e.get(n), (int, float)) else None for n in GEOMETRY_FIELDS)]
        )
    svg = to_svg(fig, "Training geometry", "run")
    tab = table(["step", *GEOMETRY_FIELDS], rows, "Geometry records", collapsed=True)
    caption = (
        "Training geometry: weight norm, gradient norm, their ratio, cosine, spectral complexity; "
        "shaded: the default early window of `lorascope regime` (step ≤ 0.2 × the last step)"
    )
    return figure(svg, caption, tab)


SECTION = SectionKind(
    name="regime",
    title="Training regime from early geometry",
    schemas=("lorascope.regime",),
    files=("regime.json",),
    build=build,
)
