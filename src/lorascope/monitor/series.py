"""Turn a run's events into the time series the rules read (pure, no I/O).

Train points keep non-finite losses (the NaN rule needs them); every other consumer filters with
`finite_losses()`.  Eval points are grouped by split; the *held-out* split used by the eval rules is
the first of EVAL_SPLITS present ("eval" is what HF Trainer reports, so the callback's output and
the monitor agree, unlike Gradience's).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..telemetry.schema import Event, as_float

EVAL_SPLITS = ("eval", "validation", "val", "test")


@dataclass(frozen=True)
class TrainPoint:
    step: int
    loss: float | None  # may be NaN/Inf
    lr: float | None
    grad_norm: float | None


@dataclass(frozen=True)
class EvalPoint:
    step: int
    split: str
    metrics: Mapping[str, float | None]


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


@dataclass(frozen=True)
class SpectralPoint:
    step: int
    layers: tuple[LayerPoint, ...]
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class RunSeries:
    run_id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    train: tuple[TrainPoint, ...] = ()
    evals: tuple[EvalPoint, ...] = ()
    spectra: tuple[SpectralPoint, ...] = ()
    logged_alerts: tuple[Mapping[str, Any], ...] = ()
    end_status: str | None = None

    def finite_losses(self) -> list[float]:
        return [p.loss for p in self.train if p.loss is not None and math.isfinite(p.loss)]

    def finite_grad_norms(self) -> list[tuple[int, float]]:
        return [
            (p.step, p.grad_norm)
            for p in self.train
            if p.grad_norm is not None and math.isfinite(p.grad_norm)
        ]

    def heldout(self) -> tuple[EvalPoint, ...]:
        """Eval points of the held-out split (first of EVAL_SPLITS that is present)."""
        for split in EVAL_SPLITS:
            pts = tuple(p for p in self.evals if p.split == split)
            if pts:
                return pts
        return ()


def _metrics(raw: Any) -> dict[str, float | None]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): as_float(v) for k, v in raw.items()}


def _layer(raw: Mapping[str, Any]) -> LayerPoint:
    return LayerPoint(
        name=str(raw.get("name", "?")),
        rank=int(raw.get("rank") or 0),
        stable_rank=as_float(raw.get("stable_rank")) or 0.0,
        utilisation=as_float(raw.get("utilisation")) or 0.0,
        top1_share=as_float(raw.get("top1_share")) or 0.0,
    )


def build_series(events: Iterable[Event]) -> RunSeries:
    """One run's events (from `RunLog.run()`) -> RunSeries.  Unknown payload fields are ignored."""
    parts: dict[str, Any] = {"train": [], "evals": [], "spectra": [], "alerts": []}
    meta: Mapping[str, Any] = {}
    config: dict[str, Any] = {}
    run_id, status = "", None
    for e in events:
        run_id = e.run_id
        step = e.step if e.step is not None else 0
        if e.event == "run_start":
            meta = e.get("meta") or {}
        elif e.event == "config":
            config = {"lora": e.get("lora") or {}, "training": e.get("training") or {}}
        elif e.event == "train_step":
            parts["train"].append(
                TrainPoint(step, as_float(e.get("loss")), as_float(e.get("lr")), as_float(e.get("grad_norm")))
            )
        elif e.event == "eval":
            parts["evals"].append(EvalPoint(step, str(e.get("split")), _metrics(e.get("metrics"))))
        elif e.event == "spectral":
            layers = tuple(_layer(x) for x in (e.get("layers") or []) if isinstance(x, Mapping))
            parts["spectra"].append(SpectralPoint(step, layers, dict(e.get("summary") or {})))
        elif e.event == "alert":
            parts["alerts"].append(dict(e.data, step=e.step))
        elif e.event == "run_end":
            status = e.get("status")
    return RunSeries(
        run_id=run_id,
        meta=meta,
        config=config,
        train=tuple(parts["train"]),
        evals=tuple(parts["evals"]),
        spectra=tuple(parts["spectra"]),
        logged_alerts=tuple(parts["alerts"]),
        end_status=status,
    )
