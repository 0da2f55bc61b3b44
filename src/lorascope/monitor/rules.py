"""Monitor rules: an explicit registry of pure functions `rule(series, thresholds) -> alerts`.

The same functions run offline (`lorascope monitor run.jsonl`) and live (`LiveMonitor` inside the
Trainer callback).  Defaults are in `Thresholds`; docs/telemetry.md explains each one.

Windows are counted in *logged* train points (one per `logging_steps`), not optimizer steps: a
plateau compares the mean of the last `window` finite losses with the mean of the `window` before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .series import RunSeries


@dataclass(frozen=True)
class Thresholds:
    window: int = 10  # logged train points per plateau window (two windows needed)
    loss_plateau_rel: float = 0.01  # loss improved < 1 % between windows -> plateau
    grad_plateau_rel: float = 0.05  # mean grad norm changed < 5 % between windows -> plateau
    falling_loss_rel: float = 0.02  # train loss still falling ≥ 2 %: vetoes CONSIDER_STOPPING
    spike_factor: float = 5.0  # grad norm > 5× the running mean of the previous points
    spike_history: int = 5  # points of history needed before spikes are judged
    spike_span: int = 50  # running-mean span (points)
    eval_patience: int = 3  # evals without improvement -> eval plateau
    eval_min_delta: float = 0.001  # relative improvement that counts
    gap_ratio: float = 1.5  # exp(eval loss − train loss) ≥ 1.5 -> memorisation gap
    low_util: float = 0.25  # mean utilisation (stable rank / r) below this -> low utilisation
    low_util_min_rank: int = 8  # ...only judged for r ≥ 8 (r = 2 at 0.4 is fine)
    collapse_jump: float = 0.25  # top-1 energy share rises by ≥ 0.25 between snapshots...
    collapse_share: float = 0.80  # ...to ≥ 0.80 -> rank-1 collapse


@dataclass(frozen=True)
class Alert:
    code: str
    severity: str  # info | warning | error
    message: str
    step: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity for de-duplication in the live monitor: spikes are per step, others per code."""
        return f"{self.code}@{self.step}" if self.code == "GRAD_SPIKE" else self.code

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "step": self.step,
            "context": dict(self.context),
        }


Rule = Callable[[RunSeries, Thresholds], list[Alert]]


def _last_step(s: RunSeries) -> int | None:
    return s.train[-1].step if s.train else None


def window_change(values: list[float], window: int) -> float | None:
    """(mean(prev window) − mean(last window)) / |mean(prev window)|; None with < 2 windows."""
    if window < 1 or len(values) < 2 * window:
        return None
    prev = sum(values[-2 * window : -window]) / window
    last = sum(values[-window:]) / window
    return (prev - last) / max(abs(prev), 1e-12)


def nonfinite_loss(s: RunSeries, t: Thresholds) -> list[Alert]:
    bad = [p for p in s.train if p.loss is not None and not math.isfinite(p.loss)]
    bad_g = [p for p in s.train if p.grad_norm is not None and not math.isfinite(p.grad_norm)]
    if not bad and not bad_g:
        return []
    first = min((bad + bad_g), key=lambda p: p.step)
    what = "loss" if bad else "gradient norm"
    return [
        Alert(
            "NONFINITE_LOSS",
            "error",
            f"{what} became NaN/Inf at step {first.step} ({len(bad)} loss, {len(bad_g)} grad-norm points)",
            first.step,
            {"n_loss": len(bad), "n_grad_norm": len(bad_g), "first_step": first.step},
        )
    ]


def gradient_spike(s: RunSeries, t: Thresholds) -> list[Alert]:
    pts = s.finite_grad_norms()
    out: list[Alert] = []
    for i in range(t.spike_history, len(pts)):
        hist = [g for _, g in pts[max(0, i - t.spike_span) : i]]
        mean = sum(hist) / len(hist)
        step, g = pts[i]
        if mean > 0 and g > t.spike_factor * mean:
            ratio = g / mean
            out.append(
                Alert(
                    "GRAD_SPIKE",
                    "warning",
                    f"gradient norm {g:.3g} at step {step} is {ratio:.1f}× its running mean {mean:.3g}",
                    step,
                    {"grad_norm": g, "running_mean": mean, "ratio": ratio},
                )
            )
    return out


def loss_plateau(s: RunSeries, t: Thresholds) -> list[Alert]:
    change = window_change(s.finite_losses(), t.window)
    if change is None or change >= t.loss_plateau_rel:
        return []
    return [
        Alert(
            "LOSS_PLATEAU",
            "info",
            f"train loss improved {change:+.2%} over the last {t.window} logged points "
            f"(< {t.loss_plateau_rel:.0%})",
            _last_step(s),
            {"relative_improvement": change, "window": t.window},
        )
    ]


def grad_norm_plateau(s: RunSeries, t: Thresholds) -> list[Alert]:
    change = window_change([g for _, g in s.finite_grad_norms()], t.window)
    if change is None or abs(change) >= t.grad_plateau_rel:
        return []
    return [
        Alert(
            "GRAD_NORM_PLATEAU",
            "info",
            f"gradient norm changed {-change:+.2%} over the last {t.window} logged points "
            f"(< {t.grad_plateau_rel:.0%})",
            _last_step(s),
            {"relative_change": -change, "window": t.window},
        )
    ]


def _eval_metric(s: RunSeries) -> tuple[str, list[tuple[int, float]], bool] | None:
    """(metric, [(step, value)], higher_is_better) for the held-out split: loss, else accuracy."""
    pts = s.heldout()
    for name, higher in (("loss", False), ("accuracy", True)):
        got = [(p.step, p.metrics.get(name)) for p in pts]
        vals = [(st, v) for st, v in got if isinstance(v, float) and math.isfinite(v)]
        if vals:
            return name, vals, higher
    return None


def eval_plateau(s: RunSeries, t: Thresholds) -> list[Alert]:
    found = _eval_metric(s)
    if found is None:
        return []
    name, vals, higher = found
    best_step, best = vals[0]
    since = 0
    for step, v in vals[1:]:
        gain = (v - best) if higher else (best - v)
        if gain > t.eval_min_delta * max(abs(best), 1e-12):
            best_step, best, since = step, v, 0
        else:
            since += 1
    if since < t.eval_patience:
        return []
    return [
        Alert(
            "EVAL_PLATEAU",
            "warning",
            f"eval {name} has not improved for {since} evaluations (best {best:.4g} at step {best_step})",
            vals[-1][0],
            {"metric": name, "evals_since_best": since, "best": best, "best_step": best_step},
        )
    ]


def memorisation_gap(s: RunSeries, t: Thresholds) -> list[Alert]:
    losses = s.finite_losses()
    found = _eval_metric(s)
    if not losses or found is None or found[0] != "loss":
        return []
    train = sum(losses[-t.window :]) / len(losses[-t.window :])
    step, ev = found[1][-1]
    ratio = math.exp(min(ev - train, 50.0))
    if ratio < t.gap_ratio:
        return []
    return [
        Alert(
            "MEMORISATION_GAP",
            "warning",
            f"eval/train ppl ratio {ratio:.2f} ≥ {t.gap_ratio} (eval loss {ev:.3f}, train {train:.3f})",
            step,
            {"gap_ratio": ratio, "eval_loss": ev, "train_loss": train},
        )
    ]


def low_utilisation(s: RunSeries, t: Thresholds) -> list[Alert]:
    if not s.spectra:
        return []
    snap = s.spectra[-1]
    live = [lp for lp in snap.layers if not lp.dead and lp.rank >= t.low_util_min_rank]
    if not live:
        return []
    mean_util = sum(lp.utilisation for lp in live) / len(live)
    if mean_util >= t.low_util:
        return []
    ranks = sorted({lp.rank for lp in live})
    return [
        Alert(
            "LOW_UTILISATION",
            "info",
            f"mean utilisation {mean_util:.2f} < {t.low_util} over {len(live)} layers of rank {ranks}: "
            "a smaller r would likely do (run `lorascope audit` on the saved adapter)",
            snap.step,
            {"mean_utilisation": mean_util, "n_layers": len(live), "ranks": ranks},
        )
    ]


def rank1_collapse(s: RunSeries, t: Thresholds) -> list[Alert]:
    hits: list[tuple[int, str, float, float]] = []
    for prev, cur in zip(s.spectra, s.spectra[1:], strict=False):
        before = {lp.name: lp for lp in prev.layers if not lp.dead}
        for lp in cur.layers:
            old = before.get(lp.name)
            if (
                old
                and lp.top1_share - old.top1_share >= t.collapse_jump
                and lp.top1_share >= t.collapse_share
            ):
                hits.append((cur.step, lp.name, old.top1_share, lp.top1_share))
    if not hits:
        return []
    step, name, share_before, share_after = hits[0]
    layers = sorted({h[1] for h in hits})
    return [
        Alert(
            "RANK1_COLLAPSE",
            "warning",
            f"top-1 energy share jumped in {len(layers)} layer(s), first {name} at step {step}: "
            f"{share_before:.2f} -> {share_after:.2f}",
            step,
            {"n_layers": len(layers), "layers": layers[:10], "first_step": step},
        )
    ]


PLATEAU_RULES: dict[str, Rule] = {
    "loss_plateau": loss_plateau,
    "grad_norm_plateau": grad_norm_plateau,
    "eval_plateau": eval_plateau,
}


def consider_stopping(s: RunSeries, t: Thresholds) -> list[Alert]:
    """≥ 2 plateau signals agree, and the train loss is not still clearly falling.

    Eval plateau with a falling train loss is over-fitting onset, not convergence: EVAL_PLATEAU
    (and MEMORISATION_GAP) report it; stopping "because nothing changes" would be wrong advice.
    """
    agreeing = [name for name, rule in PLATEAU_RULES.items() if rule(s, t)]
    if len(agreeing) < 2:
        return []
    falling = window_change(s.finite_losses(), t.window)
    if falling is not None and falling >= t.falling_loss_rel:
        return []
    return [
        Alert(
            "CONSIDER_STOPPING",
            "warning",
            f"{len(agreeing)} plateau signals agree ({', '.join(agreeing)}): "
            "further steps are unlikely to help",
            _last_step(s),
            {"signals": agreeing},
        )
    ]


RULES: dict[str, Rule] = {
    "nonfinite_loss": nonfinite_loss,
    "gradient_spike": gradient_spike,
    **PLATEAU_RULES,
    "memorisation_gap": memorisation_gap,
    "low_utilisation": low_utilisation,
    "rank1_collapse": rank1_collapse,
    "consider_stopping": consider_stopping,
}

SEVERITY_ORDER = {"info": 0, "warning": 1, "error": 2}


def run_rules(
    s: RunSeries, t: Thresholds | None = None, rules: Mapping[str, Rule] | None = None
) -> list[Alert]:
    t = t or Thresholds()
    out: list[Alert] = []
    for rule in (rules or RULES).values():
        out.extend(rule(s, t))
    return out
