"""Fair-test section: the summary of the pre-registered test of rank placed by gradient intrinsic
dimension against uniform LoRA (`examples/fair_summary.py` writes it as `summary.json`, schema
`lorascope.gid-trial/v1`; docs/gid.md, "A fair test", states the protocol and the decision rule).

Recognised by its schema only: `summary.json` is too common a name to mark a kind.  Read through
`fields.Doc`, so a hand-edited or truncated summary is refused with the key that is wrong:
`tasks`, `protocol{steps, lr_grid}`, `methods[]` (task, method, label, chosen lr, trainable
params, seeds with one test accuracy each, their mean and std, `val_curve_mean` as [step,
accuracy] pairs), `comparisons[]` (a, b, pairs, mean difference, 95 % CI, paired-t, Holm and
Wilcoxon p, per-task differences, verdict), `plateau{task: …}` (LoRA's last two validation
points), `runs`, `cpu_s_total`.  Shown: the verdicts first (they are the headline), test accuracy
per method and task (every seed a point, the mean a bar, full fine-tuning as the ceiling), the
mean validation curves, each comparison's mean difference with its CI, and the plateau check.
Deliberately left out: recomputing any statistic (the page shows what the summary decided).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import FormatError
from .base import Built, SectionKind
from .fields import Doc, describe
from .html import esc, figure, table
from .plot import LEGEND, MARGINS, PALETTE, new_figure, safe, to_svg

FULL = "full"  # the runner's name for full fine-tuning: the ceiling
ONE_POINT = 0.01  # the protocol: a last-interval rise under one accuracy point counts as stopped
# method styles: colours with contrast on white (no yellow; black is full fine-tuning's)
COLOURS = tuple(c for c in PALETTE if c not in ("#F0E442", "#000000"))
MARKERS = "osD^vPXhp<>"
LINES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Method:
    task: str
    method: str
    label: str
    lr: float
    params: int
    seeds: tuple[int, ...]
    test: tuple[float, ...]  # one test accuracy per seed, in `seeds` order
    mean: float
    std: float | None
    curve: tuple[tuple[float, float], ...]  # (step, mean validation accuracy)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    question: str | None
    pairs: int
    diff: float | None
    ci: tuple[float, float]
    p: float
    p_holm: float
    wilcoxon: float | None
    per_task: dict[str, float]
    verdict: str


@dataclass(frozen=True)
class Plateau:
    """LoRA's mean validation accuracy at its last two evaluations."""

    step_before: float
    val_before: float
    step_last: float
    val_last: float
    rise: float


@dataclass(frozen=True)
class Trial:
    title: str | None
    tasks: tuple[str, ...]
    steps: int
    lr_grid: tuple[float, ...]
    methods: tuple[Method, ...]
    comparisons: tuple[Comparison, ...]
    plateau: dict[str, Plateau]
    runs: int
    cpu_s: float
    all_finite: bool | None


def _present(d: Doc, key: str) -> Any:
    if not d.has(key):
        raise FormatError(f"{d.where + '.' if d.where else ''}{key}: missing", path=d.path)
    return d.raw(key)


def _texts(d: Doc, key: str) -> tuple[str, ...]:
    value = _present(d, key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise d.fail(key, "a list of strings", value)
    return tuple(value)


def _ints(d: Doc, key: str) -> tuple[int, ...]:
    value = _present(d, key)
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise d.fail(key, "a list of integers", value)
    return tuple(value)


def _curve(d: Doc, key: str) -> tuple[tuple[float, float], ...]:
    value = _present(d, key)
    try:
        return tuple(_point(p) for p in value)
    except (TypeError, ValueError):
        raise d.fail(key, "a list of [step, accuracy] pairs", value) from None


def _point(p: Any) -> tuple[float, float]:
    if not isinstance(p, list) or len(p) != 2 or any(isinstance(v, bool) for v in p):
        raise ValueError(describe(p))
    return float(p[0]), float(p[1])  # TypeError for a string or null


def _method(m: Doc) -> Method:
    seeds, test = _ints(m, "seeds"), tuple(m.nums("test_per_seed"))
    if len(seeds) != len(test):
        raise FormatError(
            f"{m.where}.test_per_seed: expected one accuracy per seed ({len(seeds)}), got {len(test)}",
            path=m.path,
        )
    return Method(
        task=m.text("task"),
        method=m.text("method"),
        label=m.text("label"),
        lr=m.num("lr"),
        params=m.integer("trainable_params"),
        seeds=seeds,
        test=test,
        mean=m.num("test_mean"),
        std=m.num("test_std", optional=True),
        curve=_curve(m, "val_curve_mean"),
    )


def _comparison(c: Doc) -> Comparison:
    ci = c.nums("ci95")
    if len(ci) != 2:
        raise c.fail("ci95", "[low, high]", c.raw("ci95"))
    per = c.need("per_task_diff")
    return Comparison(
        a=c.text("a"),
        b=c.text("b"),
        question=c.text("question", optional=True),
        pairs=c.integer("n_pairs"),
        diff=c.num("diff_mean", optional=True),  # null when the two methods share no (task, seed)
        ci=(ci[0], ci[1]),
        p=c.num("p"),
        p_holm=c.num("p_holm"),
        wilcoxon=c.num("wilcoxon_p", optional=True),
        per_task={t: per.num(t) for t in per.data},
        verdict=c.text("verdict"),
    )


def _plateau_of(p: Doc) -> Plateau:
    keys = ("step_before", "val_before", "step_last", "val_last", "rise")
    return Plateau(*(p.num(k) for k in keys))


def read_trial(doc: Any, path: str) -> Trial:
    d = Doc(doc, path)
    protocol = d.need("protocol")
    plateau = d.obj("plateau", optional=True)
    flag = d.raw("all_finite")
    return Trial(
        title=d.text("title", optional=True),
        tasks=_texts(d, "tasks"),
        steps=protocol.integer("steps"),
        lr_grid=tuple(protocol.nums("lr_grid")),
        methods=tuple(_method(m) for m in d.objs("methods")),
        comparisons=tuple(_comparison(c) for c in d.objs("comparisons")),
        plateau={t: _plateau_of(plateau.need(t)) for t in plateau.data} if plateau else {},
        runs=d.integer("runs"),
        cpu_s=d.num("cpu_s_total"),
        all_finite=flag if isinstance(flag, bool) else None,
    )


def _tasks(t: Trial) -> list[str]:
    """The file's task order, then any task only a method row names."""
    return list(dict.fromkeys([*t.tasks, *(m.task for m in t.methods)]))


def _style(t: Trial) -> dict[str, tuple[str, str, str]]:
    """method -> (colour, marker, line style); full fine-tuning black with a star."""
    names = [n for n in dict.fromkeys(m.method for m in t.methods) if n != FULL]
    style = {
        n: (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)], LINES[i % len(LINES)])
        for i, n in enumerate(names)
    }
    style[FULL] = ("#000000", "*", "-")
    return style


def build(path: str, doc: Any) -> Built:
    t = read_trial(doc, path)
    seeds = sorted({s for m in t.methods for s in m.seeds})
    facts: list[tuple[str, Any]] = [(f"{c.a} vs {c.b}", c.verdict) for c in t.comparisons]
    facts += [
        ("tasks", ", ".join(_tasks(t))),
        ("methods", ", ".join(dict.fromkeys(m.method for m in t.methods))),
        ("seeds", ", ".join(map(str, seeds))),
        ("steps", t.steps),
        ("learning-rate grid", ", ".join(f"{x:g}" for x in t.lr_grid)),
        ("runs", t.runs),
        ("CPU-hours", round(t.cpu_s / 3600, 2)),
    ]
    notes = [] if t.all_finite is not False else ["Some runs produced non-finite values."]
    head = f'<p class="meta">{esc(t.title)}</p>' if t.title else ""
    if not t.methods:
        return Built(data=doc, facts=facts, body=head + '<p class="missing">No methods.</p>', notes=notes)
    style = _style(t)
    body = head + _test_plot(t, style) + _curve_plot(t, style) + _comparison_plot(t) + _plateau(t)
    return Built(data=doc, facts=facts, body=body, notes=notes)


def _panels(n: int, height: float, legend_rows: int) -> tuple[Any, list[Any]]:
    """A figure with one panel per task (up to 3 a row) and room for a legend under them."""
    cols = min(max(n, 1), 3)
    nrows = -(-max(n, 1) // cols)
    total = height * nrows + 0.22 * legend_rows + 0.35
    margins = {
        "bottom": (0.75 + 0.22 * legend_rows) / total,
        "top": 1 - 0.3 / total,
        "hspace": 0.6,
        "wspace": 0.2,
    }
    fig, axes = new_figure(8.0, total, nrows, cols, margins=margins, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig: Any, axes: list[Any]) -> None:
    entries: dict[str, Any] = {}  # every method once, whichever panel drew it
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(
        list(entries.values()), list(entries), loc="lower left", bbox_to_anchor=(MARGINS["left"], 0.0),
        ncols=3, **LEGEND,
    )  # fmt: skip


def _test_panel(ax: Any, rows: list[Method], style: dict[str, tuple[str, str, str]]) -> None:
    for x, m in enumerate(rows):
        colour, marker, _ = style[m.method]
        ax.hlines(m.mean, x - 0.35, x + 0.35, color=colour, lw=2.5)  # the mean: a line, not a bar
        n = len(m.test)
        xs = [x + 0.4 * (j - (n - 1) / 2) / max(n, 1) for j in range(n)]  # spread by seed, fixed
        ax.plot(xs, m.test, marker, ms=5, color=colour, mec="#000000", mew=0.5, ls="", label=safe(m.label))
    full = next((m for m in rows if m.method == FULL), None)
    if full is not None:
        ax.axhline(full.mean, color="#000000", ls="--", lw=1.0, label="full fine-tuning mean (ceiling)")
    values = [v for m in rows for v in (*m.test, m.mean)]
    lo, hi = min(values), max(values)
    pad = max(0.02, 0.1 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1 else hi + pad)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([safe(m.method) for m in rows], rotation=30, ha="right")
    ax.grid(False, axis="x")


def _test_plot(t: Trial, style: dict[str, tuple[str, str, str]]) -> str:
    tasks = _tasks(t)
    fig, axes = _panels(len(tasks), 2.9, -(-(len(style) + 1) // 3))
    for ax, task in zip(axes, tasks, strict=True):
        _test_panel(ax, [m for m in t.methods if m.task == task], style)
        ax.set_title(safe(task))
    axes[0].set_ylabel("test accuracy")
    _legend(fig, axes)
    svg = to_svg(fig, "Test accuracy per method and task, every seed a point", "gid_trial")
    rows = [
        [
            m.task,
            m.method,
            m.label,
            f"{m.lr:g}",  # as the learning-rate grid is written (0.0002, not 2.000e-04)
            m.params,
            m.mean,
            m.std,
            ", ".join(f"{s}: {a:.4g}" for s, a in zip(m.seeds, m.test, strict=True)),
        ]
        for m in t.methods
    ]
    head = ["task", "method", "label", "chosen lr", "trainable params", "test mean", "± std", "per seed"]
    caption = (
        "Test accuracy per method, one panel per task: every seed a point, the mean a horizontal "
        "line; dashed across the panel: full fine-tuning's mean, the ceiling"
    )
    return figure(svg, caption, table(head, rows, "Methods: chosen learning rate and test accuracy"))


def _curve_plot(t: Trial, style: dict[str, tuple[str, str, str]]) -> str:
    tasks = _tasks(t)
    fig, axes = _panels(len(tasks), 2.6, -(-len(style) // 3))
    for ax, task in zip(axes, tasks, strict=True):
        for m in (m for m in t.methods if m.task == task and m.curve):
            colour, marker, line = style[m.method]
            ax.plot(
                [s for s, _ in m.curve], [a for _, a in m.curve], ls=line, marker=marker, ms=4,
                color=colour, lw=1.2, label=safe(m.label),
            )  # fmt: skip
        ax.set_title(safe(task))
        ax.set_xlabel("step")
    axes[0].set_ylabel("validation accuracy (mean over seeds)")
    _legend(fig, axes)
    svg = to_svg(fig, "Mean validation curves per method and task", "gid_trial")
    steps = sorted({s for m in t.methods for s, _ in m.curve})
    rows = [[m.task, m.method, *(dict(m.curve).get(s) for s in steps)] for m in t.methods]
    tab = table(
        ["task", "method", *(f"step {s:g}" for s in steps)], rows, "Mean validation accuracy", collapsed=True
    )
    caption = "Validation accuracy at each evaluation, mean over the seeds at the chosen learning rate"
    return figure(svg, caption, tab)


def _comparison_plot(t: Trial) -> str:
    if not t.comparisons:
        return '<p class="missing">No comparisons.</p>'
    cs = t.comparisons
    fig, ax = new_figure(
        8.0, 0.5 * len(cs) + 1.0, margins={"left": 0.3, "bottom": 0.65 / (0.5 * len(cs) + 1)}
    )
    ys = list(range(len(cs)))[::-1]  # the first comparison on top
    for y, c in zip(ys, cs, strict=True):
        ax.plot(list(c.ci), [y, y], "-", color="#0072B2", lw=2)
        if c.diff is not None:
            ax.plot([c.diff], [y], "o", color="#0072B2", mec="#000000", mew=0.5, ms=6)
    ax.axvline(0.0, color="#000000", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([safe(f"{c.a} vs {c.b}") for c in cs])
    ax.set_xlabel("mean difference of test accuracy, A − B (95 % CI)")
    svg = to_svg(fig, "Mean paired difference per comparison with its 95 % confidence interval", "gid_trial")
    rows = [
        [
            f"{c.a} vs {c.b}",
            c.question,
            c.pairs,
            c.diff,
            f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]",
            c.p,
            c.p_holm,
            c.wilcoxon,
            "; ".join(f"{task} {d:+.4f}" for task, d in c.per_task.items()),
            c.verdict,
        ]
        for c in cs
    ]
    head = ["comparison", "question", "pairs", "mean diff", "95 % CI", "paired t p", "Holm p"]
    head += ["Wilcoxon p", "per task", "verdict"]
    caption = (
        "Mean difference of test accuracy over the paired (task, seed) runs, A − B, with its 95 % "
        "confidence interval; the verdict is the pre-registered rule's (Holm-adjusted p and the sign "
        "on every task), the Wilcoxon p is reported beside it"
    )
    return figure(svg, caption, table(head, rows, "Comparisons"))


def _plateau(t: Trial) -> str:
    lines = []
    for task, p in t.plateau.items():
        state = "still rising" if p.rise >= ONE_POINT else "stopped rising (under one point)"
        lines.append(
            f"LoRA validation accuracy on {task}: {p.val_before:.4f} at step {p.step_before:g}, "
            f"{p.val_last:.4f} at step {p.step_last:g} (rise {p.rise:+.4f}): {state}."
        )
    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    return f'<h3>Long enough?</h3><ul class="plateau">{items}</ul>' if items else ""


SECTION = SectionKind(
    name="gid_trial",
    title="Fair test: rank placed by GID against uniform LoRA",
    schemas=("lorascope.gid-trial",),
    files=(),  # `summary.json` is too generic a name: the schema alone decides
    build=build,
)
