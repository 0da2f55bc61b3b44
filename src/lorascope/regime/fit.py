"""`fit_regimes`: how well each feature set tells the runs' regimes apart, leave-one-group-out.

One pass: read the logs -> early-window features (`features.py`) -> labels and groups
(`labels.py`) -> for every feature set and classifier the out-of-fold predictions for the true
labels and for `permutations` shuffles of them at once (`classifiers.logo_scores`) -> accuracy,
confusion matrix, permutation p = (1 + #{shuffled accuracy ≥ observed}) / (1 + shuffles) ->
McNemar between sets, entropies and mutual information, DFA of each run's spectral-complexity
series -> the model (`model.py`) fitted on every kept run.  Nothing is written here
(`write_fit` publishes the output folder atomically).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .classifiers import CLASSIFIERS, Folds, Options, logo_folds, logo_scores
from .deps import scipy_stats, single_thread, sklearn_module
from .features import FEATURE_SETS, FeatureConfig, FeatureTable, feature_table
from .labels import labels_from_file, values_from_key
from .logs import RunData, read_run_data
from .model import RegimeModel, fit_model
from .stats import (
    Anova,
    MarginalMI,
    McNemar,
    SummedMI,
    anova,
    dfa_alpha,
    entropy,
    log_loss,
    marginal_mi,
    mcnemar,
    softmax,
)

FIT_SCHEMA = "lorascope.regime/v1"


@dataclass(frozen=True)
class FitConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    label_key: str | None = None  # e.g. meta.regime; or labels_path
    labels_path: str | None = None
    group_key: str = "meta.seed"
    permutations: int = 2000
    mi_shuffles: int = 50
    ridge_alpha: float = 0.01
    logistic_c: float = 1.0
    seed: int = 0
    model_set: str = "geometry_7"
    drop_excluded: bool = False

    def __post_init__(self) -> None:
        if (self.label_key is None) == (self.labels_path is None):
            raise InvalidArgumentError("give the labels: either --labels FILE or --label-key meta.KEY")
        if self.permutations < 0 or self.mi_shuffles < 0:
            raise InvalidArgumentError("--permutations and --mi-shuffles must be ≥ 0")
        if self.model_set not in self.features.sets:
            raise InvalidArgumentError(
                f"--model-set {self.model_set} is not among the feature sets fitted "
                f"({', '.join(self.features.sets)})"
            )


@dataclass(frozen=True)
class ClassifierResult:
    accuracy: float
    n_correct: int
    p_value: float | None  # None without permutations
    confusion: tuple[tuple[int, ...], ...]  # rows: true class, columns: predicted
    predictions: tuple[str, ...]


@dataclass(frozen=True)
class SetResult:
    name: str
    features: tuple[str, ...]
    classifiers: dict[str, ClassifierResult]
    log_loss_logistic: float  # calibrated conditional entropy, nats
    log_loss_ridge_softmax: float  # the softmax of ridge scores (poorly calibrated)
    summed_mi: SummedMI


@dataclass(frozen=True)
class DfaResult:
    alphas: tuple[float | None, ...]  # per kept run, spectral complexity
    alphas_diff: tuple[float | None, ...]  # per kept run, its first differences
    anova: Anova
    anova_diff: Anova


@dataclass(frozen=True)
class FitReport:
    config: FitConfig
    table: FeatureTable
    labels: tuple[str, ...]  # per kept run
    groups: tuple[str, ...]
    excluded_labels: tuple[str | None, ...]  # per excluded run
    classes: tuple[str, ...]
    entropy: float
    sets: tuple[SetResult, ...]
    mcnemar: dict[str, tuple[tuple[str, str, McNemar], ...]]
    dfa: DfaResult
    model: RegimeModel

    def to_dict(self) -> dict[str, Any]:
        from .report_json import fit_document

        return fit_document(self)

    def to_json(self) -> str:
        from ..jsontext import dumps

        return dumps(self.to_dict())


def _labels_and_groups(
    runs: Sequence[RunData], table: FeatureTable, config: FitConfig
) -> tuple[list[str | None], list[str | None]]:
    kept = [r.excluded is None for r in table.rows]
    if config.labels_path is not None:
        labels = labels_from_file(runs, config.labels_path, kept)
    else:
        labels = values_from_key(runs, str(config.label_key), kept, "label", "--labels FILE")
    groups = values_from_key(runs, config.group_key, kept, "group for leave-one-group-out", "--group-key")
    return labels, groups


def check_design(labels: Sequence[str], groups: Sequence[str], where: str) -> None:
    """Refuse a design leave-one-group-out cannot test."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise InvalidArgumentError(
            f"every run has the label {classes[0]!r}: nothing to tell apart", path=where
        )
    if len(set(groups)) < 2:
        raise InvalidArgumentError(
            f"all runs are in one group ({groups[0]}): leave-one-group-out needs ≥ 2 groups",
            path=where,
            hint="pass --group-key with a key that differs between runs (e.g. meta.seed)",
        )
    for c in classes:
        seen = {g for lab, g in zip(labels, groups, strict=True) if lab == c}
        if len(seen) < 2:
            raise InvalidArgumentError(
                f"regime {c!r} has runs in only one group ({next(iter(seen))}): "
                "leave-one-group-out would never train on it",
                path=where,
            )


def fit_regimes(
    paths: Sequence[str], config: FitConfig, progress: Callable[[int, int, str], None] | None = None
) -> FitReport:
    """The whole fit (module docstring); `progress(done, total, name)` is told as each feature set
    is done.  Every matrix here is tiny (runs × ≤ 8 features): BLAS and OpenMP threads only add
    start-up cost (scikit-learn's k-NN reduction spent 0.1 s per call waking threads on a busy
    2-core machine), so the pass runs single-threaded."""
    sklearn_module("feature_selection")  # both extras present before any log is read, and loaded
    scipy_stats()  # before the thread limit: threadpoolctl limits only the libraries already loaded
    with single_thread():
        return _fit(paths, config, progress or (lambda done, total, name: None))


def _read(paths: Sequence[str], config: FitConfig):  # noqa: ANN202 (a private 5-tuple)
    """(runs, feature table, labels and groups of every run, indices of the kept runs), checked."""
    if not paths:
        raise InvalidArgumentError("regime fit needs run logs")
    if len(set(paths)) != len(paths):
        raise InvalidArgumentError(
            "a run log is given twice", path=next(p for p in paths if paths.count(p) > 1)
        )
    runs = [read_run_data(p) for p in paths]
    table = feature_table(runs, config.features)
    if table.excluded and not config.drop_excluded:
        first = table.excluded[0]
        raise InvalidArgumentError(
            f"{first.excluded} ({len(table.excluded)} of {len(runs)} runs cannot give the features)",
            path=first.path,
            hint="fix the logs, or pass --drop-excluded to fit on the rest (they are listed in the output)",
        )
    labels_all, groups_all = _labels_and_groups(runs, table, config)
    kept_idx = [i for i, r in enumerate(table.rows) if r.excluded is None]
    if len(kept_idx) < 2:
        raise InvalidArgumentError(
            f"only {len(kept_idx)} run(s) give features: nothing to fit", path=paths[0]
        )
    return runs, table, labels_all, groups_all, kept_idx


def _fit(paths: Sequence[str], config: FitConfig, progress: Callable[[int, int, str], None]) -> FitReport:
    runs, table, labels_all, groups_all, kept_idx = _read(paths, config)
    labels = [str(labels_all[i]) for i in kept_idx]
    groups = [str(groups_all[i]) for i in kept_idx]
    check_design(labels, groups, table.kept[0].path)
    classes = tuple(sorted(set(labels)))
    codes = np.array([classes.index(x) for x in labels])
    rng = np.random.default_rng(config.seed)
    perms = np.array([rng.permutation(codes) for _ in range(config.permutations)]).reshape(-1, len(codes))
    options = Options(config.ridge_alpha, config.logistic_c)
    design = _Design(codes, perms, logo_folds(groups), classes, options)
    needed = config.features.needed
    progress(0, len(config.features.sets) + 1, "mutual information")
    mi = marginal_mi(table.matrix(needed), needed, codes, config.mi_shuffles, config.seed)
    sets = []
    for i, name in enumerate(config.features.sets, 1):
        progress(i, len(config.features.sets) + 1, name)
        sets.append(_fit_set(name, table.matrix(FEATURE_SETS[name]), design, mi))
    progress(len(sets) + 1, len(sets) + 1, "done")
    pairs = {
        kind: tuple(
            (a.name, b.name, mcnemar(_correct(a, kind, labels), _correct(b, kind, labels)))
            for a, b in combinations(sets, 2)
        )
        for kind in CLASSIFIERS
    }
    model_x = table.matrix(FEATURE_SETS[config.model_set])
    model = fit_model(config.model_set, model_x, codes, classes, options, table)
    return FitReport(
        config=config,
        table=table,
        labels=tuple(labels),
        groups=tuple(groups),
        excluded_labels=tuple(labels_all[i] for i, r in enumerate(table.rows) if r.excluded is not None),
        classes=classes,
        entropy=entropy(codes, len(classes)),
        sets=tuple(sets),
        mcnemar=pairs,
        dfa=_dfa([runs[i] for i in kept_idx], labels),
        model=model,
    )


def _correct(s: SetResult, kind: str, labels: Sequence[str]) -> list[bool]:
    return [p == t for p, t in zip(s.classifiers[kind].predictions, labels, strict=True)]


@dataclass(frozen=True)
class _Design:
    """What every feature set is fitted against: the labels, their shuffles, the folds."""

    codes: np.ndarray  # (n,) class codes
    perms: np.ndarray  # (P, n) shuffled codes
    folds: Folds
    classes: tuple[str, ...]
    options: Options


def _classifier(kind: str, x: np.ndarray, d: _Design) -> tuple[ClassifierResult, np.ndarray]:
    """(result, out-of-fold scores (n, K)) of one classifier on one feature matrix."""
    k = len(d.classes)
    scores = logo_scores(kind, x, d.codes[None, :], k, d.folds, d.options)[0]  # (n, K)
    pred = scores.argmax(axis=1)
    n_correct = int((pred == d.codes).sum())
    p_value = None
    if len(d.perms):
        null = logo_scores(kind, x, d.perms, k, d.folds, d.options).argmax(axis=2)  # (P, n)
        hits = ((null == d.perms).sum(axis=1) >= n_correct).sum()
        p_value = float((1 + hits) / (1 + len(d.perms)))
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (d.codes, pred), 1)
    result = ClassifierResult(
        accuracy=n_correct / len(d.codes),
        n_correct=n_correct,
        p_value=p_value,
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        predictions=tuple(d.classes[i] for i in pred),
    )
    return result, scores


def _fit_set(name: str, x: np.ndarray, d: _Design, mi: MarginalMI) -> SetResult:
    results, scores = {}, {}
    for kind in CLASSIFIERS:
        results[kind], scores[kind] = _classifier(kind, x, d)
    return SetResult(
        name,
        FEATURE_SETS[name],
        results,
        log_loss_logistic=log_loss(scores["logistic"], d.codes),
        log_loss_ridge_softmax=log_loss(softmax(scores["ridge"]), d.codes),
        summed_mi=mi.summed(FEATURE_SETS[name]),
    )


def _dfa(runs: Sequence[RunData], labels: Sequence[str]) -> DfaResult:
    alphas, diffs = [], []
    for run in runs:
        series = [v for _, v in sorted(run.series("spectral_complexity"), key=lambda sv: sv[0])]
        ok = bool(series) and all(v is not None for v in series)
        x = np.array(series, dtype=np.float64) if ok else None
        alphas.append(dfa_alpha(x) if x is not None else None)
        diffs.append(dfa_alpha(np.diff(x)) if x is not None else None)

    def by_label(values: list[float | None]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {c: [] for c in sorted(set(labels))}
        for v, lab in zip(values, labels, strict=True):
            if v is not None:
                out[lab].append(v)
        return out

    return DfaResult(tuple(alphas), tuple(diffs), anova(by_label(alphas)), anova(by_label(diffs)))
