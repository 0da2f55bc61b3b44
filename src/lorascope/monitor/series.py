"""A run's events folded, one at a time, into what the rules and the summary read.

`RunSeries.add(event)` is called per event, offline (`monitor_run` streams the log) and live (the
callback's `LiveMonitor`), and keeps only what `rules.RULES` and `summary.summarise` need:

* train points: their count, last and largest step; the last 2·window finite losses and
  (step, grad norm) pairs (the two plateau windows); the last `spike_span` finite grad norms, the
  running mean GRAD_SPIKE compares each new point with as it arrives (spikes found are kept, one
  tuple each); the count and first step of non-finite losses and grad norms (NONFINITE_LOSS);
* per eval split: the count, the last metrics, the last and best accuracy, and for loss and for
  accuracy the running best, evaluations since the best (EVAL_PLATEAU) and the last finite value;
* spectral snapshots: their count, the last one's layers, each one's mean utilisation (the trend
  the report lists), the first rank-1 collapse and the set of layers that collapsed.

Memory is O(window + spike_span + layers + snapshots + spikes + logged alerts), whatever the
number of lines: a 1 GB log is read in the memory of a small one.  Results are those of the rules
applied to the whole event list (same comparisons, same sums in the same order).  The windows are
sized by the `Thresholds` the series is built with.

The held-out split the eval rules read is the first of EVAL_SPLITS present ("eval" is what HF
Trainer reports; Gradience's logs use val and test).  The train side is the mean of the last
`window` train losses, or, in a log without train losses, the last eval of the "train" split.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..telemetry.schema import Event, as_float
from .thresholds import Thresholds

EVAL_SPLITS = ("eval", "validation", "val", "test")


@dataclass(frozen=True)
class LayerPoint:
    name: str
    rank: int
    stable_rank: float
    utilisation: float
    top1_share: float

    @property
    def dead(self) -> bool:
        return not self.stable_rank > 0.0


@dataclass
class MetricTrack:
    """Running best of one eval metric's finite values (EVAL_PLATEAU) and its last value."""

    higher_is_better: bool
    n: int = 0
    best: float = 0.0
    best_step: int = 0
    since_best: int = 0
    last: tuple[int, float] | None = None

    def add(self, step: int, value: float, min_delta: float) -> None:
        if self.n == 0:
            self.best_step, self.best, self.since_best = step, value, 0
        else:
            gain = (value - self.best) if self.higher_is_better else (self.best - value)
            if gain > min_delta * max(abs(self.best), 1e-12):
                self.best_step, self.best, self.since_best = step, value, 0
            else:
                self.since_best += 1
        self.n += 1
        self.last = (step, value)


@dataclass
class SplitSeries:
    n: int = 0
    last_metrics: dict[str, float | None] = field(default_factory=dict)
    final_accuracy: float | None = None
    best_accuracy: float | None = None
    loss: MetricTrack = field(default_factory=lambda: MetricTrack(False))
    accuracy: MetricTrack = field(default_factory=lambda: MetricTrack(True))
    last_ppl: tuple[int, float] | None = None  # (step, last finite perplexity)


@dataclass
class SpectraSeries:
    n: int = 0
    layers: tuple[LayerPoint, ...] = ()
    n_layers: int = 0  # of the last snapshot (its summary's count when it lists no layers)
    last_step: int = 0
    means: tuple[float | None, float | None, float | None] = (None, None, None)  # stable rank, util, top-1
    trend: list[tuple[int, float | None]] = field(default_factory=list)  # (step, mean utilisation)
    first_util: float | None = None
    collapse: tuple[int, str, float, float] | None = None  # first (step, layer, share before, after)
    collapsed: set[str] = field(default_factory=set)


class RunSeries:
    """One run, folded.  `add` each event in order; read the fields (never mutate them)."""

    def __init__(self, thresholds: Thresholds | None = None, run_id: str = ""):
        t = self.thresholds = thresholds or Thresholds()
        self.run_id = run_id
        self.meta: Mapping[str, Any] = {}
        self.config: Mapping[str, Any] = {}
        self.end_status: str | None = None
        self.logged_alerts: list[dict[str, Any]] = []
        self.n_train = 0
        self.last_train_step: int | None = None  # step of the last train point, in log order
        self.max_train_step: int | None = None
        self.losses: deque[float] = deque(maxlen=2 * t.window)  # finite
        self.grad_norms: deque[tuple[int, float]] = deque(maxlen=2 * t.window)  # finite
        self._spike_history: deque[float] = deque(maxlen=t.spike_span)
        self._n_finite_grads = 0
        self.spikes: list[tuple[int, float, float]] = []  # (step, grad norm, running mean)
        self.n_nonfinite_loss = 0
        self.n_nonfinite_grad = 0
        self.first_nonfinite_step: int | None = None
        self.splits: dict[str, SplitSeries] = {}
        self.spectra = SpectraSeries()

    def add(self, e: Event) -> None:
        self.run_id = e.run_id
        step = e.step if e.step is not None else 0
        if e.event == "run_start":
            self.meta = e.get("meta") or {}
        elif e.event == "config":
            self.config = {"lora": e.get("lora") or {}, "training": e.get("training") or {}}
        elif e.event == "train_step":
            self._train(step, as_float(e.get("loss")), as_float(e.get("grad_norm")))
        elif e.event == "eval":
            self._eval(step, str(e.get("split")), e.get("metrics") or {})
        elif e.event == "spectral":
            layers = tuple(_layer(x) for x in (e.get("layers") or []) if isinstance(x, Mapping))
            self._spectral(step, layers, e.get("summary") or {})
        elif e.event == "alert":
            self.logged_alerts.append(dict(e.data, step=e.step))
        elif e.event == "run_end":
            self.end_status = e.get("status")

    def _train(self, step: int, loss: float | None, grad: float | None) -> None:
        self.n_train += 1
        self.last_train_step = step
        self.max_train_step = step if self.max_train_step is None else max(self.max_train_step, step)
        if loss is not None:
            if math.isfinite(loss):
                self.losses.append(loss)
            else:
                self.n_nonfinite_loss += 1
                self._nonfinite(step)
        if grad is not None:
            if math.isfinite(grad):
                self._grad(step, grad)
            else:
                self.n_nonfinite_grad += 1
                self._nonfinite(step)

    def _nonfinite(self, step: int) -> None:
        first = self.first_nonfinite_step
        self.first_nonfinite_step = step if first is None else min(first, step)

    def _grad(self, step: int, g: float) -> None:
        t, hist = self.thresholds, self._spike_history
        if self._n_finite_grads >= t.spike_history and hist:
            mean = sum(hist) / len(hist)
            if mean > 0 and g > t.spike_factor * mean:
                self.spikes.append((step, g, mean))
        hist.append(g)
        self._n_finite_grads += 1
        self.grad_norms.append((step, g))

    def _eval(self, step: int, split: str, raw: Any) -> None:
        metrics = {str(k): as_float(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
        s = self.splits.setdefault(split, SplitSeries())
        s.n += 1
        s.last_metrics = metrics
        acc = metrics.get("accuracy")
        if isinstance(acc, float):
            s.final_accuracy = acc
            if s.best_accuracy is None or acc > s.best_accuracy:  # max()'s comparison, NaN included
                s.best_accuracy = acc
        for track, name in ((s.loss, "loss"), (s.accuracy, "accuracy")):
            v = metrics.get(name)
            if isinstance(v, float) and math.isfinite(v):
                track.add(step, v, self.thresholds.eval_min_delta)
        ppl = metrics.get("ppl")
        if isinstance(ppl, float) and math.isfinite(ppl):
            s.last_ppl = (step, ppl)

    def _spectral(self, step: int, layers: tuple[LayerPoint, ...], summary: Mapping[str, Any]) -> None:
        sp, t = self.spectra, self.thresholds
        before = {lp.name: lp for lp in sp.layers if not lp.dead}
        for lp in layers:
            old = before.get(lp.name)
            jump = old is not None and lp.top1_share - old.top1_share >= t.collapse_jump
            if old is not None and jump and lp.top1_share >= t.collapse_share:
                sp.collapse = sp.collapse or (step, lp.name, old.top1_share, lp.top1_share)
                sp.collapsed.add(lp.name)
        live = [lp for lp in layers if not lp.dead]
        if layers:
            sp.means = (
                _mean([lp.stable_rank for lp in live]),
                _mean([lp.utilisation for lp in live]),
                _mean([lp.top1_share for lp in live]),
            )
            sp.n_layers = len(layers)
        else:  # a snapshot of means only (Gradience's lora_audit metrics)
            sr, util, top1 = (as_float(summary.get(k)) for k in _SUMMARY_KEYS)
            sp.means = (sr, util, top1)
            count = summary.get("n_layers")
            sp.n_layers = count if isinstance(count, int) and not isinstance(count, bool) else 0
        sp.n += 1
        sp.layers, sp.last_step = layers, step
        sp.trend.append((step, sp.means[1]))
        if sp.first_util is None:
            sp.first_util = sp.means[1]

    def heldout(self) -> SplitSeries | None:
        """The held-out split (first of EVAL_SPLITS that is present), or None."""
        return next((self.splits[s] for s in EVAL_SPLITS if s in self.splits), None)

    def train_loss(self) -> float | None:
        """Mean of the last `window` finite train losses; with none logged, the last eval of the
        train split (Gradience's logs measure train loss/ppl that way)."""
        recent = list(self.losses)[-self.thresholds.window :]
        if recent:
            return sum(recent) / len(recent)
        train = self.splits.get("train")
        return train.loss.last[1] if train and train.loss.last else None

    def train_ppl(self) -> float | None:
        loss = self.train_loss()
        if loss is not None:
            return math.exp(min(loss, 50.0))
        train = self.splits.get("train")
        return train.last_ppl[1] if train and train.last_ppl else None


_SUMMARY_KEYS = ("mean_stable_rank", "mean_utilisation", "mean_top1_share")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _layer(raw: Mapping[str, Any]) -> LayerPoint:
    rank = raw.get("rank")
    return LayerPoint(
        name=str(raw.get("name", "?")),
        rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else 0,
        stable_rank=as_float(raw.get("stable_rank")) or 0.0,
        utilisation=as_float(raw.get("utilisation")) or 0.0,
        top1_share=as_float(raw.get("top1_share")) or 0.0,
    )


def build_series(events: Iterable[Event], thresholds: Thresholds | None = None) -> RunSeries:
    """One run's events (from `RunLog.run()` or a list) -> RunSeries.  Unknown fields are ignored."""
    series = RunSeries(thresholds)
    for e in events:
        series.add(e)
    return series
