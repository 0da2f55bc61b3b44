"""Telemetry section: a run log (`run.jsonl`, lorascope's or Gradience's schema).

The log is streamed once (`telemetry.scan_log`, the reader `lorascope monitor` uses, so a bad
line gets the monitor's one-line error) and the last run's series are kept: train loss and grad
norm, each eval split's loss and accuracy, and per spectral snapshot the mean utilisation and
top-1 energy share.  Long series are thinned to at most `CAP` points by keeping every 2^k-th point
(the stride is in the embedded JSON), so memory and page size do not grow with the log.  The
alerts are `monitor_run`'s (default thresholds) plus those the log itself holds, each event once (an
alert the live monitor logged and the offline pass found again is one row, `source` "log +
monitor", at the earlier step); each is marked on every panel as a numbered vertical line and
listed in a table.
"""

from __future__ import annotations

import math
from typing import Any

from .base import Built, SectionKind
from .html import figure, table
from .plot import SEVERITY_STYLE, legend_above, new_figure, safe, to_svg

CAP = 1000  # points kept per series
MAX_MARKED = 60  # alerts drawn as lines (the table lists every one)


class Thin:
    """Every `stride`-th point of a stream, with the stride doubled whenever 2·CAP are held."""

    def __init__(self) -> None:
        self.points: list[list[Any]] = []
        self.stride = 1
        self.n = 0

    def add(self, point: list[Any]) -> None:
        if self.n % self.stride == 0:
            self.points.append(point)
            if len(self.points) >= 2 * CAP:
                self.points = self.points[::2]
                self.stride *= 2
        self.n += 1


def _finite(x: Any) -> float | None:
    from ..telemetry.schema import as_float

    v = as_float(x)
    return v if v is not None and math.isfinite(v) else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class _Run:
    def __init__(self) -> None:
        self.train, self.spectral = Thin(), Thin()
        self.evals: dict[str, Thin] = {}

    def add(self, e: Any) -> None:
        if e.event == "train_step":
            # a NaN/Inf loss is None here (strict JSON); the monitor's NONFINITE_LOSS alert marks it
            self.train.add([e.step, _finite(e.get("loss")), _finite(e.get("grad_norm"))])
        elif e.event == "eval":
            m = e.get("metrics") or {}
            self.evals.setdefault(str(e.get("split")), Thin()).add(
                [e.step, _finite(m.get("loss")), _finite(m.get("accuracy"))]
            )
        elif e.event == "spectral":
            s = e.get("summary") or {}
            live = [x for x in (e.get("layers") or []) if isinstance(x, dict) and _finite(x.get("sigma_max"))]
            util = _finite(s.get("mean_utilisation"))
            top1 = _finite(s.get("mean_top1_share"))
            if util is None:
                util = _mean([v for x in live if (v := _finite(x.get("utilisation"))) is not None])
            if top1 is None:
                top1 = _mean([v for x in live if (v := _finite(x.get("top1_share"))) is not None])
            self.spectral.add([e.step, util, top1])


def _by_step(alert: dict[str, Any]) -> tuple[bool, int]:
    return (alert["step"] is None, alert["step"] or 0)


def merged_alerts(found: list[dict[str, Any]], logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's alerts and those the log holds, each event once.  The live monitor logs the
    alerts its rules raise, at the step it noticed them (a grad spike at step 65 logged at step 75,
    a low utilisation at the first snapshot that showed it), and the offline pass finds them again
    at its own step: the k-th alert of a code in the log and the k-th the monitor finds are one
    event, shown at the earlier step with `source` "log + monitor" (and `steps`, both steps)."""
    pool: dict[str, list[dict[str, Any]]] = {}
    for a in sorted(logged, key=lambda a: (a.get("step") is None, a.get("step") or 0)):
        pool.setdefault(str(a.get("code")), []).append(a)
    out = []
    for a in sorted(found, key=_by_step):
        twin = pool.get(str(a["code"])) and pool[str(a["code"])].pop(0)
        if not twin:
            out.append(dict(a, source="monitor"))
            continue
        steps = sorted({s for s in (a["step"], twin.get("step")) if s is not None})
        first = twin if twin.get("step") is not None and twin.get("step") == steps[0] else a
        entry = {k: first.get(k) for k in ("severity", "code", "message")}
        out.append(entry | {"step": steps[0] if steps else None, "steps": steps, "source": "log + monitor"})
    for rest in pool.values():
        out += [
            {k: a.get(k) for k in ("severity", "code", "message")} | {"step": a.get("step"), "source": "log"}
            for a in rest
        ]
    return sorted(out, key=_by_step)


def build(path: str, doc: Any) -> Built:
    from ..monitor import monitor_run

    runs: dict[str, _Run] = {}

    def observe(event: Any) -> None:  # the monitor's own pass: same errors, same run separation
        runs.setdefault(event.run_id, _Run()).add(event)

    monitor = monitor_run(path, observe=observe).to_dict()  # raises the monitor's error for an empty log
    run = runs[monitor["run_id"]]
    alerts = merged_alerts(monitor["alerts"], monitor["logged_alerts"])
    data = {
        "path": path,
        "run_id": monitor["run_id"],
        "thinning": {"cap": CAP, "train": run.train.stride, "spectral": run.spectral.stride},
        "columns": {
            "train": ["step", "loss", "grad_norm"],
            "eval": ["step", "loss", "accuracy"],
            "spectral": ["step", "mean_utilisation", "mean_top1_share"],
        },
        "train": run.train.points,
        "eval": {k: v.points for k, v in run.evals.items()},
        "spectral": run.spectral.points,
        "alerts": alerts,
        "monitor": monitor,
    }
    s = monitor["summary"]
    by_sev = {sev: sum(a["severity"] == sev for a in alerts) for sev in SEVERITY_STYLE}
    facts = [
        ("run", monitor["run_id"]),
        ("status", s.get("status")),
        ("last step", s.get("last_step")),
        ("final train loss", s.get("final_train_loss")),
        ("final eval loss", s.get("final_eval_loss")),
        ("final eval accuracy", s.get("final_eval_accuracy")),
        ("alerts (error / warning / info)", f"{by_sev['error']} / {by_sev['warning']} / {by_sev['info']}"),
    ]
    notes = (
        [f"other runs in this log, not shown: {', '.join(monitor['other_runs'])}"]
        if monitor["other_runs"]
        else []
    )
    if monitor.get("torn_tail"):
        notes.append("the last line of the log was torn (a crash mid-write) and was dropped")
    from .regime_section import geometry_body

    return Built(data=data, facts=facts, body=_plot(data) + geometry_body(path), notes=notes)


def _series(points: list[list[Any]], col: int) -> tuple[list[Any], list[Any]]:
    pts = [p for p in points if p[0] is not None and p[col] is not None]
    return [p[0] for p in pts], [p[col] for p in pts]


def _plot(data: dict[str, Any]) -> str:
    margins = {"top": 0.92, "bottom": 0.09, "hspace": 0.32, "left": 0.09}
    fig, axes = new_figure(8.0, 5.8, 2, 2, margins=margins, sharex=True)
    (loss_ax, acc_ax), (grad_ax, spec_ax) = axes
    loss_ax.plot(*_series(data["train"], 1), "-", color="#0072B2", lw=1, label="train loss")
    markers = iter("os^Dv")
    for split, pts in data["eval"].items():
        m = next(markers, "o")
        xs, ys = _series(pts, 1)
        if xs:
            loss_ax.plot(xs, ys, m + "--", color="#D55E00", ms=4, lw=1, label=safe(f"{split} loss"))
        xs, ys = _series(pts, 2)
        if xs:
            acc_ax.plot(xs, ys, m + "-", color="#009E73", ms=4, lw=1, label=safe(f"{split} accuracy"))
    grad_ax.plot(*_series(data["train"], 2), "-", color="#CC79A7", lw=1, label="grad norm")
    spec_ax.plot(*_series(data["spectral"], 1), "o-", color="#0072B2", ms=4, label="mean utilisation")
    spec_ax.plot(*_series(data["spectral"], 2), "s--", color="#E69F00", ms=4, label="mean top-1 share")
    for ax, title in (
        (loss_ax, "loss"),
        (acc_ax, "eval accuracy"),
        (grad_ax, "grad norm"),
        (spec_ax, "spectrum"),
    ):
        ax.set_ylabel(title)
        if ax.get_legend_handles_labels()[0]:
            legend_above(ax, ncols=2)
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="#555555")
    for n, a in enumerate(data["alerts"][:MAX_MARKED], 1):
        if a["step"] is None:
            continue
        colour, style = SEVERITY_STYLE.get(a["severity"], SEVERITY_STYLE["info"])
        for ax in (loss_ax, acc_ax, grad_ax, spec_ax):
            ax.axvline(a["step"], color=colour, ls=style, lw=0.9)
        loss_ax.annotate(
            f"A{n}", (a["step"], 0.98), xycoords=("data", "axes fraction"), va="top", color=colour,
            xytext=(2, 0), textcoords="offset points",
        )  # fmt: skip
    grad_ax.set_xlabel("step")
    spec_ax.set_xlabel("step")
    svg = to_svg(fig, "Training trajectories with alerts", "run")
    caption = (
        "Loss, eval accuracy, grad norm, and mean utilisation / top-1 energy share per spectral snapshot; "
        "vertical lines are alerts A1, A2, … (solid: error, dashed: warning, dotted: info)"
    )
    return figure(svg, caption, _tables(data))


def _tables(data: dict[str, Any]) -> str:
    alert_rows = [
        [f"A{n}", a["step"], a["severity"], a["code"], a["message"], a["source"]]
        for n, a in enumerate(data["alerts"], 1)
    ]
    out = table(["#", "step", "severity", "code", "message", "from"], alert_rows, "Alerts")
    train_rows = data["train"]
    out += table(["step", "loss", "grad norm"], train_rows, "Train steps (as plotted)", collapsed=True)
    eval_rows = [[split, *p] for split, pts in data["eval"].items() for p in pts]
    out += table(["split", "step", "loss", "accuracy"], eval_rows, "Evaluations", collapsed=True)
    out += table(
        ["step", "mean utilisation", "mean top-1 share"],
        data["spectral"],
        "Spectral snapshots",
        collapsed=True,
    )
    return out


SECTION = SectionKind(name="run", title="Training run", schemas=(), files=(), build=build)
