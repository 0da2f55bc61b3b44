"""Human-readable monitor report (the JSON form is `MonitorReport.to_json`).

Run ids, model and dataset names, alert codes and messages and their context all come from the
log: every line is passed through `textsafe.clean`, so a control character in any of them shows
as an escape (``\\x1b``) and a newline cannot forge a line.
"""

from __future__ import annotations

from collections import defaultdict

from ..textsafe import clean
from . import MonitorReport
from .rules import SEVERITY_ORDER, Alert


def _fmt(x, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _summary_lines(report: MonitorReport) -> list[str]:
    s = report.summary
    sp = s["spectral"]
    lines = [
        f"run {report.run_id}  model={s.get('model') or '?'}  dataset={s.get('dataset') or '?'}  "
        f"status={s.get('status') or 'unfinished'}  last step={s.get('last_step')}",
        f"  train loss {_fmt(s['final_train_loss'])} (ppl {_fmt(s['train_ppl'])})   "
        f"eval loss {_fmt(s['final_eval_loss'])} (ppl {_fmt(s['eval_ppl'])})   "
        f"gap ratio {_fmt(s['gap_ratio'], '.3f')}",
    ]
    if s.get("final_eval_accuracy") is not None:
        lines.append(
            f"  eval accuracy {s['final_eval_accuracy']:.4f} "
            f"(best {s['best_eval_accuracy']:.4f}, {s['n_evals']} evals)"
        )
    if sp["n_snapshots"]:
        lines.append(
            f"  spectra: {sp['n_snapshots']} snapshots of {sp['n_layers']} layers; mean stable rank "
            f"{_fmt(sp['mean_stable_rank'], '.2f')}, utilisation {_fmt(sp['mean_utilisation'], '.3f')} "
            f"(change {_fmt(sp['utilisation_change'], '+.3f')}), "
            f"top-1 share {_fmt(sp['mean_top1_share'], '.2f')}"
        )
    else:
        lines.append("  spectra: none logged (enable the callback's snapshots)")
    if report.torn_tail:
        lines.append("  note: the last line of the log was torn (crash mid-write) and was ignored")
    if report.other_runs:
        lines.append(
            f"  note: the file holds {len(report.other_runs)} other run(s); pass --run-id to pick one"
        )
    return lines


def _grouped(alerts: tuple[Alert, ...]) -> list[tuple[Alert, int]]:
    """One line per code (the first occurrence) with a count: 40 spikes are one line."""
    by_code: dict[str, list[Alert]] = defaultdict(list)
    for a in alerts:
        by_code[a.code].append(a)
    groups = [(group[0], len(group)) for group in by_code.values()]
    return sorted(groups, key=lambda g: (-SEVERITY_ORDER[g[0].severity], g[0].code))


def to_text(report: MonitorReport, verbose: bool = False) -> str:
    lines = _summary_lines(report)
    if not report.alerts:
        lines.append("alerts: none")
    else:
        lines.append(f"alerts ({len(report.alerts)}):")
        for first, count in _grouped(report.alerts):
            more = f" (+{count - 1} more)" if count > 1 else ""
            lines.append(f"  {first.severity.upper():<8} {first.code:<18} {first.message}{more}")
            if verbose:
                for a in [a for a in report.alerts if a.code == first.code]:
                    lines.append(f"           step {a.step}: {dict(a.context)}")
    if verbose:
        if report.logged_alerts:
            lines.append(f"alerts logged live during training ({len(report.logged_alerts)}):")
            for rec in report.logged_alerts:
                lines.append(
                    f"  step {rec.get('step')}: {rec.get('severity')} {rec.get('code')} {rec.get('message')}"
                )
        lines.append("thresholds: " + ", ".join(f"{k}={v}" for k, v in report.thresholds.__dict__.items()))
        trend = report.summary["spectral"].get("utilisation_trend") or []
        if trend:
            lines.append("utilisation by step: " + ", ".join(f"{st}:{_fmt(u, '.3f')}" for st, u in trend))
    return "\n".join(clean(line) for line in lines) + "\n"
