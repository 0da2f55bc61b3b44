"""Monitor rules: an explicit registry of pure functions `rule(series, thresholds) -> alerts`.

The same functions run offline (`lorascope monitor run.jsonl`) and live (`LiveMonitor` inside the
Trainer callback).  Defaults are in `Thresholds`; docs/telemetry.md explains each one.

Windows are counted in *logged* train points (one per `logging_steps`), not optimizer steps: a
plateau compares the mean of the last `window` finite losses with the mean of the `window` before.
The series (`series.RunSeries`) keeps exactly what these functions read, so a rule never needs the
whole log; GRAD_SPIKE's running mean is taken as each point arrives, while the series is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .series import RunSeries
from .thresholds import Thresholds


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
    return s.last_train_step


def window_change(values: list[float], window: int) -> float | None:
    """(mean(prev window) − mean(last window)) / |mean(prev window)|; None with < 2 windows."""
    if window < 1 or len(values) < 2 * window:
        return None
    prev = sum(values[-2 * window : -window]) / window
    last = sum(values[-window:]) / window
    return (prev - last) / max(abs(prev), 1e-12)


def nonfinite_loss(s: RunSeries, t: Thresholds) -> list[Alert]:
    n_loss, n_grad, first = s.n_nonfinite_loss, s.n_nonfinite_grad, s.first_nonfinite_step
    if first is None:
        return []
    what = "loss" if n_loss else "gradient norm"
    return [
        Alert(
            "NONFINITE_LOSS",
            "error",
            f"{what} became NaN/Inf at step {first} ({n_loss} loss, {n_grad} grad-norm points)",
            first,
            {"n_loss": n_loss, "n_grad_norm": n_grad, "first_step": first},
        )
    ]


def gradient_spike(s: RunSeries, t: Thresholds) -> list[Alert]:
    """Spikes are judged as the points arrive (`RunSeries`): each against the mean of the
    ≤ spike_span finite grad norms before it, once spike_history of them exist."""
    return [
        Alert(
            "GRAD_SPIKE",
            "warning",
            f"gradient norm {g:.3g} at step {step} is {g / mean:.1f}× its running mean {mean:.3g}",
            step,
            {"grad_norm": g, "running_mean": mean, "ratio": g / mean},
        )
        for step, g, mean in s.spikes
    ]


def loss_plateau(s: RunSeries, t: Thresholds) -> list[Alert]:
    change = window_change(list(s.losses), t.window)
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
    change = window_change([g for _, g in s.grad_norms], t.window)
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


def _eval_metric(s: RunSeries):
    """(metric name, its track, higher is better) for the held-out split: loss, else accuracy."""
    held = s.heldout()
    if held is None:
        return None
    for name, track, higher in (("loss", held.loss, False), ("accuracy", held.accuracy, True)):
        if track.n:
            return name, track, higher
    return None


def eval_plateau(s: RunSeries, t: Thresholds) -> list[Alert]:
    found = _eval_metric(s)
    if found is None:
        return []
    name, track, _ = found
    since, best, best_step = track.since_best, track.best, track.best_step
    if since < t.eval_patience or track.last is None:
        return []
    return [
        Alert(
            "EVAL_PLATEAU",
            "warning",
            f"eval {name} has not improved for {since} evaluations (best {best:.4g} at step {best_step})",
            track.last[0],
            {"metric": name, "evals_since_best": since, "best": best, "best_step": best_step},
        )
    ]


def memorisation_gap(s: RunSeries, t: Thresholds) -> list[Alert]:
    """exp(eval loss − train loss) ≥ gap_ratio; where a side has no loss, its perplexity (eval ppl /
    train ppl, as Gradience's logs give them)."""
    held = s.heldout()
    train = s.train_loss()
    if held is None:
        return []
    if train is not None and held.loss.last is not None:
        step, ev = held.loss.last
        ratio = math.exp(min(ev - train, 50.0))
        detail = f"eval loss {ev:.3f}, train {train:.3f}"
        context = {"gap_ratio": ratio, "eval_loss": ev, "train_loss": train}
    else:
        train_ppl = s.train_ppl()
        if train_ppl is None or not train_ppl > 0 or held.last_ppl is None:
            return []
        step, ev_ppl = held.last_ppl
        ratio = ev_ppl / train_ppl
        detail = f"eval ppl {ev_ppl:.4g}, train {train_ppl:.4g}"
        context = {"gap_ratio": ratio, "eval_ppl": ev_ppl, "train_ppl": train_ppl}
    if ratio < t.gap_ratio:
        return []
    return [
        Alert(
            "MEMORISATION_GAP",
            "warning",
            f"eval/train ppl ratio {ratio:.2f} ≥ {t.gap_ratio} ({detail})",
            step,
            context,
        )
    ]


def low_utilisation(s: RunSeries, t: Thresholds) -> list[Alert]:
    snap = s.spectra
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
            snap.last_step,
            {"mean_utilisation": mean_util, "n_layers": len(live), "ranks": ranks},
        )
    ]


def rank1_collapse(s: RunSeries, t: Thresholds) -> list[Alert]:
    """A live layer's top-1 share rose ≥ collapse_jump between consecutive snapshots to ≥
    collapse_share (compared as each snapshot arrives, `RunSeries`)."""
    if s.spectra.collapse is None:
        return []
    step, name, share_before, share_after = s.spectra.collapse
    layers = sorted(s.spectra.collapsed)
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
    falling = window_change(list(s.losses), t.window)
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
