"""`monitor_run(path)`: a run log through the rule engine; `LiveMonitor`: the same rules live.

    report = monitor_run("run.jsonl")      # last run in the file unless run_id is given
    report.alerts, report.summary          # Alert tuples, summary dict
    report.exit_code(fail_on="warning")    # 1 when an alert at or above that severity fired

The log is read in one streaming pass: each run's events are folded into its `RunSeries` as they
are read (memory bounded by the rules' windows, not by the file), every run of an appended file is
kept apart, and the one asked for (the last by default) is reported.  Logs of Gradience's schema
are read the same way (`telemetry.gradience`).  Rules and their defaults: `rules.RULES`,
`Thresholds`, docs/telemetry.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import jsontext
from ..errors import FormatError, InvalidArgumentError
from ..telemetry.reader import scan_log
from ..telemetry.schema import Event
from .rules import RULES, SEVERITY_ORDER, Alert, run_rules
from .series import RunSeries, build_series
from .summary import summarise
from .thresholds import Thresholds

MONITOR_SCHEMA = "lorascope.monitor/v1"


@dataclass(frozen=True)
class MonitorReport:
    path: str
    run_id: str
    summary: dict[str, Any]
    alerts: tuple[Alert, ...]
    logged_alerts: tuple[dict[str, Any], ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)
    torn_tail: bool = False
    other_runs: tuple[str, ...] = ()

    def worst(self) -> str | None:
        sevs = [a.severity for a in self.alerts]
        return max(sevs, key=SEVERITY_ORDER.__getitem__) if sevs else None

    def exit_code(self, fail_on: str | None = None) -> int:
        if fail_on is None:
            return 0
        if fail_on not in SEVERITY_ORDER:
            raise InvalidArgumentError(
                f"--fail-on must be one of {', '.join(SEVERITY_ORDER)}, got {fail_on!r}"
            )
        hit = any(SEVERITY_ORDER[a.severity] >= SEVERITY_ORDER[fail_on] for a in self.alerts)
        return 1 if hit else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MONITOR_SCHEMA,
            "path": self.path,
            "run_id": self.run_id,
            "other_runs": list(self.other_runs),
            "torn_tail": self.torn_tail,
            "summary": self.summary,
            "alerts": [a.to_dict() for a in self.alerts],
            "logged_alerts": list(self.logged_alerts),
            "thresholds": self.thresholds.__dict__,
        }

    def to_json(self) -> str:
        return jsontext.dumps(_finite(self.to_dict()))


def _finite(x: Any) -> Any:
    """NaN/Inf -> None so --json output is strict JSON."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def analyse(series: RunSeries, thresholds: Thresholds | None = None, path: str = "<memory>") -> MonitorReport:
    """The report for a built series.  The series' windows were sized by the thresholds it was
    built with (`build_series(events, thresholds)`); other thresholds here are refused."""
    t = series.thresholds
    if thresholds is not None and thresholds != t:
        raise InvalidArgumentError("the series was built with other thresholds: pass them to build_series")
    return MonitorReport(
        path=path,
        run_id=series.run_id,
        summary=summarise(series),
        alerts=tuple(run_rules(series, t)),
        logged_alerts=tuple(dict(a) for a in series.logged_alerts),  # plain dicts: to_dict is JSON
        thresholds=t,
    )


def monitor_run(
    path: str | Path,
    thresholds: Thresholds | None = None,
    run_id: str | None = None,
    observe: Callable[[Event], None] | None = None,
) -> MonitorReport:
    """One streaming pass over the log; the report of `run_id`, or of the last run in the file.
    `observe`, when given, sees every event of that same pass (a caller that also needs the raw
    series, such as the report's plots, reads the log once)."""
    t = thresholds or Thresholds()
    scan = scan_log(path)
    runs: dict[str, RunSeries] = {}
    for event in scan:
        series = runs.get(event.run_id)
        if series is None:
            series = runs[event.run_id] = RunSeries(t, event.run_id)
        series.add(event)
        if observe is not None:
            observe(event)
    if not runs:
        raise InvalidArgumentError("the run log holds no events", path=path)
    wanted = list(runs)[-1] if run_id is None else run_id
    if wanted not in runs:
        raise FormatError(f"no run {wanted!r} in the log (runs: {', '.join(runs)})", path=path)
    report = analyse(runs[wanted], t, str(path))
    others = tuple(r for r in runs if r != wanted)
    return MonitorReport(**{**report.__dict__, "torn_tail": scan.torn_tail, "other_runs": others})


class LiveMonitor:
    """Feed events as they are written; `check()` returns alerts not reported before.

    Folds each event into one `RunSeries` (constant work per event) and runs the same pure rules as
    `monitor_run` on it; the callback calls `check()` only at evaluations, spectral snapshots and
    non-finite losses, so the cost stays off the step path.
    """

    def __init__(self, thresholds: Thresholds | None = None):
        self.thresholds = thresholds or Thresholds()
        self._series = RunSeries(self.thresholds)
        self._seen: set[str] = set()

    def add(self, event: Event) -> None:
        self._series.add(event)

    def check(self) -> list[Alert]:
        fresh = []
        for alert in run_rules(self._series, self.thresholds):
            if alert.key not in self._seen:
                self._seen.add(alert.key)
                fresh.append(alert)
        return fresh


__all__ = [
    "MONITOR_SCHEMA",
    "RULES",
    "Alert",
    "LiveMonitor",
    "MonitorReport",
    "RunSeries",
    "Thresholds",
    "analyse",
    "build_series",
    "monitor_run",
]
