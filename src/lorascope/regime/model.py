"""The regime model file: what `regime fit` learned from every kept run, as JSON (never pickle).

Schema `lorascope.regime-model/v1`: feature_set, features (names, in column order), classes,
scaler {mean, std} (raw units), centroids (per class, standardised units), ridge {coef (d×K),
intercept (K), alpha}, logistic {coef (d×K), intercept (K), C}, ranges {feature: [min, max]} of
the training runs (raw units), early_frac, window_end_median (the median last step of the training
runs' windows), n_runs, lorascope_version.  `load_model` checks every field (a model of another
feature set, or whose feature names differ from that set's, is refused naming the file).

`classify_run` scores one run: the prediction of each classifier, logistic probabilities, the
distance to each class centroid in standardised units, and the features outside the training
range (a warning: the prediction there is an extrapolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ..files import read_json
from ..version import __version__
from .classifiers import Options, centroid_fit, logistic_fit, one_hot, ridge_fit, standardise
from .features import FEATURE_SETS, FeatureConfig, FeatureTable, run_features
from .logs import read_run_data

MODEL_SCHEMA = "lorascope.regime-model/v1"


@dataclass(frozen=True)
class RegimeModel:
    feature_set: str
    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    centroids: tuple[tuple[float, ...], ...]  # (K, d), standardised
    ridge_coef: tuple[tuple[float, ...], ...]  # (d, K)
    ridge_intercept: tuple[float, ...]
    logistic_coef: tuple[tuple[float, ...], ...]  # (d, K)
    logistic_intercept: tuple[float, ...]
    ranges: tuple[tuple[float, float], ...]  # per feature (min, max), raw units
    early_frac: float
    window_end_median: float
    n_runs: int
    ridge_alpha: float = 0.01
    logistic_c: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MODEL_SCHEMA,
            "lorascope_version": __version__,
            "feature_set": self.feature_set,
            "features": list(self.features),
            "classes": list(self.classes),
            "scaler": {"mean": list(self.mean), "std": list(self.std)},
            "centroids": {c: list(row) for c, row in zip(self.classes, self.centroids, strict=True)},
            "ridge": {
                "alpha": self.ridge_alpha,
                "coef": [list(r) for r in self.ridge_coef],
                "intercept": list(self.ridge_intercept),
            },
            "logistic": {
                "C": self.logistic_c,
                "coef": [list(r) for r in self.logistic_coef],
                "intercept": list(self.logistic_intercept),
            },
            "ranges": {f: list(r) for f, r in zip(self.features, self.ranges, strict=True)},
            "early_frac": self.early_frac,
            "window_end_median": self.window_end_median,
            "n_runs": self.n_runs,
        }


def _rows(a: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def fit_model(
    name: str,
    x: np.ndarray,
    codes: np.ndarray,
    classes: tuple[str, ...],
    options: Options,
    table: FeatureTable,
) -> RegimeModel:
    """The three classifiers fitted on every kept run (x: (n, d) raw features)."""
    k = len(classes)
    mean, std = standardise(x)
    z = (x - mean) / std
    y = one_hot(codes[None, :], k)
    w, b = ridge_fit(z, y, options.ridge_alpha)
    cents, _ = centroid_fit(z, y)
    lw = logistic_fit(z, y, options.logistic_c)[0]  # (d+1, K)
    ends = [r.window_end for r in table.kept if r.window_end is not None]
    return RegimeModel(
        feature_set=name,
        features=FEATURE_SETS[name],
        classes=classes,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        centroids=_rows(cents[0]),
        ridge_coef=_rows(w[0]),
        ridge_intercept=tuple(float(v) for v in b[0]),
        logistic_coef=_rows(lw[1:]),
        logistic_intercept=tuple(float(v) for v in lw[0]),
        ranges=tuple((float(lo), float(hi)) for lo, hi in zip(x.min(axis=0), x.max(axis=0), strict=True)),
        early_frac=table.config.early_frac,
        window_end_median=float(np.median(ends)) if ends else math.nan,
        n_runs=len(codes),
        ridge_alpha=options.ridge_alpha,
        logistic_c=options.logistic_c,
    )


# --- reading a model file back --------------------------------------------------------------------


def _numbers(value: Any, shape: tuple[int, ...], key: str, path: str) -> np.ndarray:
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape != shape or not np.isfinite(a).all():
        raise FormatError(f"key {key}: expected finite numbers of shape {list(shape)}", path=path)
    return a


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """The object under `key`, or {} when absent or not an object (its numbers are checked later)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def load_model(path: str | Path) -> RegimeModel:
    path = str(path)
    doc = read_json(path, "regime model")
    if not isinstance(doc, dict) or doc.get("schema") != MODEL_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise FormatError(f"not a regime model (schema {got!r}, expected {MODEL_SCHEMA})", path=path)
    name = doc.get("feature_set")
    if not isinstance(name, str) or name not in FEATURE_SETS:
        raise FormatError(
            f"key feature_set: unknown feature set {name!r} (known: {', '.join(FEATURE_SETS)})", path=path
        )
    listed = doc.get("features")
    features = tuple(listed) if isinstance(listed, list) else ()
    if features != FEATURE_SETS[name]:
        raise FormatError(
            f"key features: {list(features)} are not feature set {name}'s {list(FEATURE_SETS[name])}",
            path=path,
        )
    classes = doc.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise FormatError("key classes: expected a list of ≥ 2 distinct class names", path=path)
    early_frac = float(_numbers(doc.get("early_frac"), (), "early_frac", path))
    if not 0 < early_frac <= 1:
        raise FormatError(f"key early_frac: must be in (0, 1], got {early_frac}", path=path)
    d, k = len(features), len(classes)
    scaler, ridge, logistic, cents, ranges = (
        _section(doc, s) for s in ("scaler", "ridge", "logistic", "centroids", "ranges")
    )
    std = _numbers(scaler.get("std"), (d,), "scaler.std", path)
    if (std <= 0).any():
        raise FormatError("key scaler.std: must be > 0", path=path)
    return RegimeModel(
        feature_set=name,
        features=features,
        classes=tuple(classes),
        mean=tuple(_numbers(scaler.get("mean"), (d,), "scaler.mean", path)),
        std=tuple(std),
        centroids=_rows(_numbers([cents.get(c) for c in classes], (k, d), "centroids", path)),
        ridge_coef=_rows(_numbers(ridge.get("coef"), (d, k), "ridge.coef", path)),
        ridge_intercept=tuple(_numbers(ridge.get("intercept"), (k,), "ridge.intercept", path)),
        logistic_coef=_rows(_numbers(logistic.get("coef"), (d, k), "logistic.coef", path)),
        logistic_intercept=tuple(_numbers(logistic.get("intercept"), (k,), "logistic.intercept", path)),
        ranges=tuple(
            (float(lo), float(hi))
            for lo, hi in _numbers([ranges.get(f) for f in features], (d, 2), "ranges", path)
        ),
        early_frac=early_frac,
        window_end_median=float(doc["window_end_median"])
        if isinstance(doc.get("window_end_median"), (int, float))
        else math.nan,
        n_runs=int(_numbers(doc.get("n_runs", 0), (), "n_runs", path)),
        ridge_alpha=float(_numbers(ridge.get("alpha", 0.01), (), "ridge.alpha", path)),
        logistic_c=float(_numbers(logistic.get("C", 1.0), (), "logistic.C", path)),
    )


# --- classifying one run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    path: str
    run_id: str
    model_path: str
    feature_set: str
    features: dict[str, float]
    predictions: dict[str, str]  # classifier -> class
    probabilities: dict[str, float]  # logistic
    ridge_scores: dict[str, float]
    distances: dict[str, float]  # to each centroid, standardised units
    out_of_range: tuple[tuple[str, float, float, float], ...]  # (feature, value, min, max)
    window_end: int | None

    @property
    def regime(self) -> str:
        return self.predictions["logistic"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "lorascope.regime-classify/v1",
            "path": self.path,
            "run_id": self.run_id,
            "model": self.model_path,
            "feature_set": self.feature_set,
            "regime": self.regime,
            "predictions": dict(self.predictions),
            "probabilities": dict(self.probabilities),
            "ridge_scores": dict(self.ridge_scores),
            "centroid_distances": dict(self.distances),
            "features": dict(self.features),
            "window_end": self.window_end,
            "out_of_range": [
                {"feature": f, "value": v, "train_min": lo, "train_max": hi}
                for f, v, lo, hi in self.out_of_range
            ],
        }

    def to_json(self) -> str:
        from ..jsontext import dumps

        return dumps(self.to_dict())


def score(model: RegimeModel, values: dict[str, float]) -> tuple[dict, dict, dict, dict]:
    """(predictions, probabilities, ridge scores, distances) of one feature row."""
    x = np.array([values[f] for f in model.features])
    z = (x - np.array(model.mean)) / np.array(model.std)  # (d,)
    ridge = z @ np.array(model.ridge_coef) + np.array(model.ridge_intercept)  # (K,)
    logits = z @ np.array(model.logistic_coef) + np.array(model.logistic_intercept)
    e = np.exp(logits - logits.max())
    prob = e / e.sum()
    dist = np.sqrt(((np.array(model.centroids) - z[None, :]) ** 2).sum(axis=1))  # (K,)
    cls = model.classes
    preds = {
        "ridge": cls[int(ridge.argmax())],
        "centroid": cls[int(dist.argmin())],
        "logistic": cls[int(prob.argmax())],
    }
    as_map = lambda a: {c: float(v) for c, v in zip(cls, a, strict=True)}  # noqa: E731
    return preds, as_map(prob), as_map(ridge), as_map(dist)


def classify_run(
    path: str, model: RegimeModel, model_path: str, window_end: int | None = None
) -> Classification:
    """Classify the run at `path` (its own early window unless `window_end` fixes the last step)."""
    run = read_run_data(path)
    config = FeatureConfig(early_frac=model.early_frac, sets=(model.feature_set,), window_end=window_end)
    row = run_features(run, config)
    if row.excluded is not None:
        raise FormatError(f"cannot classify: {row.excluded}", path=path)
    values = {f: float(row.values[f]) for f in model.features}  # type: ignore[arg-type]
    preds, prob, ridge, dist = score(model, values)
    outside = tuple(
        (f, values[f], lo, hi)
        for f, (lo, hi) in zip(model.features, model.ranges, strict=True)
        if not lo <= values[f] <= hi
    )
    return Classification(
        path,
        run.run_id,
        model_path,
        model.feature_set,
        values,
        preds,
        prob,
        ridge,
        dist,
        outside,
        row.window_end,
    )
