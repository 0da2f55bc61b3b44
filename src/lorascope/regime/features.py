"""Early-window features of a run's training geometry: one row per run, or the reason it has none.

Window: the geometry records with step ≤ early_frac × the run's last step (the last step of any
event of the run), at least `min_records` of them; a run with fewer is excluded, never zero-filled.
Features (means over the window unless said otherwise):

  loss_mean                  train loss: the train_step events in the window, else geometry's `loss`
  weight_norm_mean           weight norm
  weight_norm_slope          c1 of the least-squares fit w ≈ c0 + c1·u + c2·u², u = the window's steps
                             rescaled to [0, 1] (first record 0, last 1): dw/du at the window start
  weight_norm_curvature      2·c2 of the same fit: d²w/du²
  grad_norm_mean             gradient norm
  grad_to_weight_ratio_mean  gradient-to-weight ratio
  cos_grad_weight_mean       cosine between gradient and weights
  spectral_complexity_mean   spectral complexity

A window value that is missing (null) or NaN/Inf excludes the run, with the field and step named.
Only the features of the feature sets asked for are required (`FeatureConfig.sets`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from .logs import RunData

FEATURES = (
    "weight_norm_mean",
    "weight_norm_slope",
    "weight_norm_curvature",
    "grad_norm_mean",
    "grad_to_weight_ratio_mean",
    "cos_grad_weight_mean",
    "spectral_complexity_mean",
    "loss_mean",
)
GEOMETRY_6 = FEATURES[:6]
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "geometry_6": GEOMETRY_6,
    "geometry_7": (*GEOMETRY_6, "spectral_complexity_mean"),
    "loss": ("loss_mean",),
    "spectral": ("spectral_complexity_mean",),
}
# feature -> the geometry field it is computed from (loss_mean may come from train_step instead)
SOURCE = {
    "weight_norm_mean": "weight_norm",
    "weight_norm_slope": "weight_norm",
    "weight_norm_curvature": "weight_norm",
    "grad_norm_mean": "grad_norm",
    "grad_to_weight_ratio_mean": "grad_to_weight_ratio",
    "cos_grad_weight_mean": "cos_grad_weight",
    "spectral_complexity_mean": "spectral_complexity",
    "loss_mean": "loss",
}


@dataclass(frozen=True)
class FeatureConfig:
    early_frac: float = 0.2
    min_records: int = 3
    sets: tuple[str, ...] = tuple(FEATURE_SETS)
    window_end: int | None = None  # an absolute last step of the window (the monitor's live check)

    def __post_init__(self) -> None:
        if not 0 < self.early_frac <= 1:
            raise InvalidArgumentError(f"--early-frac must be in (0, 1], got {self.early_frac}")
        if self.min_records < 3:
            raise InvalidArgumentError("the window needs at least 3 records (a quadratic fit)")
        unknown = [s for s in self.sets if s not in FEATURE_SETS]
        if unknown or not self.sets:
            raise InvalidArgumentError(
                f"unknown feature set(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(FEATURE_SETS)}"
            )

    @property
    def needed(self) -> tuple[str, ...]:
        wanted = {f for s in self.sets for f in FEATURE_SETS[s]}
        return tuple(f for f in FEATURES if f in wanted)


@dataclass(frozen=True)
class FeatureRow:
    """One run's features (`values`, by FEATURES name; None where not needed), or why it has none."""

    path: str
    run_id: str
    values: dict[str, float | None] = field(default_factory=dict)
    n_records: int = 0
    window_end: int | None = None  # the last step inside the window
    excluded: str | None = None
    finished: bool = True  # False: no run_end, the window is a fraction of the steps logged so far


@dataclass(frozen=True)
class FeatureTable:
    config: FeatureConfig
    rows: tuple[FeatureRow, ...]

    @property
    def kept(self) -> tuple[FeatureRow, ...]:
        return tuple(r for r in self.rows if r.excluded is None)

    @property
    def excluded(self) -> tuple[FeatureRow, ...]:
        return tuple(r for r in self.rows if r.excluded is not None)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """(runs kept, len(names)) float64."""
        return np.array([[r.values[n] for n in names] for r in self.kept], dtype=np.float64).reshape(
            len(self.kept), len(names)
        )

    def to_dict(self) -> dict:
        return {
            "early_frac": self.config.early_frac,
            "min_records": self.config.min_records,
            "sets": {s: list(FEATURE_SETS[s]) for s in self.config.sets},
            "features": list(self.config.needed),
            "runs": [
                {
                    "path": r.path,
                    "run_id": r.run_id,
                    "n_records": r.n_records,
                    "window_end": r.window_end,
                    "excluded": r.excluded,
                    "finished": r.finished,
                    "values": {n: r.values.get(n) for n in self.config.needed},
                }
                for r in self.rows
            ],
        }


def window_fit(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(slope, curvature) = (c1, 2·c2) of the least-squares quadratic c0 + c1·u + c2·u², u = steps
    rescaled to [0, 1]."""
    s = np.asarray(steps, dtype=np.float64)
    u = (s - s[0]) / (s[-1] - s[0])
    design = np.stack([np.ones_like(u), u, u * u], axis=1)  # (n, 3)
    coef, *_ = np.linalg.lstsq(design, np.asarray(values, dtype=np.float64), rcond=None)
    return float(coef[1]), float(2.0 * coef[2])


def run_features(run: RunData, config: FeatureConfig) -> FeatureRow:
    """The features of one run (see the module docstring)."""

    def excluded(why: str, n: int = 0, end: int | None = None) -> FeatureRow:
        return FeatureRow(run.path, run.run_id, n_records=n, window_end=end, excluded=why)

    if run.last_step is None and not run.geometry:
        return excluded("empty log (no events)")
    if not run.geometry:
        return excluded("no geometry events (log them with the geometry probe or LorascopeCallback)")
    end = config.window_end
    if end is None:
        end = math.floor(config.early_frac * (run.last_step or 0) + 1e-9)  # 0.29·100 is 28.999…
    timed = sorted(
        ((e.step, e) for e in run.geometry if e.step is not None and e.step <= end), key=lambda se: se[0]
    )
    window = [e for _, e in timed]
    n = len(window)
    if n < config.min_records:
        return excluded(f"{n} geometry record(s) with step ≤ {end}, need ≥ {config.min_records}", n, end)
    steps = [step for step, _ in timed]
    if steps[0] == steps[-1]:
        return excluded(f"every geometry record of the window is at step {steps[0]}", n, end)
    cols: dict[str, list[float]] = {}
    for feature in config.needed:
        name = SOURCE[feature]
        if name in cols:
            continue
        got = _column(run, window, name, end)
        if isinstance(got, str):
            return excluded(got, n, end)
        cols[name] = got
    values: dict[str, float | None] = {}
    for feature in config.needed:
        col = cols[SOURCE[feature]]
        if feature == "weight_norm_slope":
            values[feature] = window_fit(steps, col)[0]
        elif feature == "weight_norm_curvature":
            values[feature] = window_fit(steps, col)[1]
        else:
            values[feature] = float(np.mean(col))
    return FeatureRow(
        run.path, run.run_id, values, n, end, finished=run.finished or config.window_end is not None
    )


def _column(run: RunData, window: list, name: str, end: int) -> list[float] | str:
    """A field's window values, or why they cannot be used."""
    if name == "loss":
        losses = [(s, v) for s, v in run.losses if s <= end]
        if losses:
            return _finite_or_reason(losses, "train_step loss")
    from ..telemetry import as_float

    for e in window:
        raw = e.get(name)
        if raw is not None and as_float(raw) is None:  # unchecked where the schema lacks the event
            return f"geometry {name} is not a number ({str(raw)[:20]!r}) at step {e.step}"
    pairs = [(e.step, as_float(e.get(name))) for e in window]
    got = _finite_or_reason(pairs, f"geometry {name}")
    if name == "loss" and isinstance(got, str):
        return f"no train_step loss in the window, and {got}"
    return got


def _finite_or_reason(pairs: list[tuple[int, float | None]], what: str) -> list[float] | str:
    for step, v in pairs:
        if v is None:
            return f"{what} missing at step {step}"
        if not math.isfinite(v):
            return f"{what} is {v} at step {step}"
    return [v for _, v in pairs if v is not None]


def feature_table(runs: Sequence[RunData], config: FeatureConfig | None = None) -> FeatureTable:
    config = config or FeatureConfig()
    return FeatureTable(config, tuple(run_features(r, config) for r in runs))
