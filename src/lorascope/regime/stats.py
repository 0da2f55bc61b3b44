"""The statistics of `regime fit` besides the classifiers: DFA, McNemar, entropies, mutual
information, ANOVA.

Written by hand, and why:
* DFA (detrended fluctuation analysis) follows one exact recipe (below) that no well-kept library
  implements as such: profile y = cumsum(x − mean); scales = the unique int(logspace(log10 4,
  log10 N/4, 20)); non-overlapping segments of each scale from the start, each detrended by a
  least-squares line; F(s) = the mean of the segments' RMS residual; a scale needs ≥ 2 segments,
  α needs ≥ 4 scales with F > 0; α = the least-squares slope of log F against log s.
* McNemar's test is two formulas on two counts: the continuity-corrected χ² = (|b − c| − 1)²/(b + c)
  with its 1-degree-of-freedom tail erfc(√(χ²/2)), and the exact two-sided binomial p =
  min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, ½), summed in exact integers (math.comb); tests
  check both against scipy.
Mutual information per feature (`mutual_info_classif`) comes from scikit-learn, the one-way ANOVA
(`f_oneway`) from scipy, both imported when called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .deps import scipy_stats, sklearn_module

MIN_SCALES = 4


def dfa_scales(n: int) -> np.ndarray:
    """The scales used for a series of length n (may be fewer than MIN_SCALES)."""
    if n < 16:
        return np.array([], dtype=np.int64)
    raw = np.logspace(math.log10(4), math.log10(n / 4), 20).astype(np.int64)
    scales = np.unique(raw)
    return scales[n // scales >= 2]


def fluctuation(profile: np.ndarray, scale: int) -> float:
    """F(s): the mean over the non-overlapping segments of length `scale` (from the start) of the
    RMS residual of a least-squares line through each segment of the profile."""
    n_seg = len(profile) // scale
    segs = np.asarray(profile[: n_seg * scale], dtype=np.float64).reshape(n_seg, scale)  # (S, s)
    t = np.arange(scale, dtype=np.float64)
    tc = t - t.mean()
    slope = (segs - segs.mean(axis=1, keepdims=True)) @ tc / (tc @ tc)  # (S,)
    fitted = segs.mean(axis=1, keepdims=True) + slope[:, None] * tc[None, :]
    rms = np.sqrt(((segs - fitted) ** 2).mean(axis=1))  # (S,)
    return float(rms.mean())


def dfa_alpha(series: Sequence[float] | np.ndarray) -> float | None:
    """The DFA exponent α of the series, or None when fewer than MIN_SCALES scales are usable."""
    x = np.asarray(series, dtype=np.float64)
    if len(x) < 16 or not np.isfinite(x).all():
        return None
    profile = np.cumsum(x - x.mean())
    pairs = [(s, f) for s in dfa_scales(len(x)) if (f := fluctuation(profile, int(s))) > 0]
    if len(pairs) < MIN_SCALES:
        return None
    log_s = np.log([s for s, _ in pairs])
    log_f = np.log([f for _, f in pairs])
    ls = log_s - log_s.mean()
    return float(ls @ (log_f - log_f.mean()) / (ls @ ls))


@dataclass(frozen=True)
class McNemar:
    b: int  # runs the first set gets right and the second wrong
    c: int  # the other way round
    chi2: float
    p_chi2: float
    p_exact: float

    def to_dict(self) -> dict:
        return {"b": self.b, "c": self.c, "chi2": self.chi2, "p_chi2": self.p_chi2, "p_exact": self.p_exact}


def mcnemar(first_correct: Sequence[bool], second_correct: Sequence[bool]) -> McNemar:
    a = np.asarray(first_correct, dtype=bool)
    s = np.asarray(second_correct, dtype=bool)
    b, c = int((a & ~s).sum()), int((~a & s).sum())
    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, 1.0)
    chi2 = (abs(b - c) - 1) ** 2 / n
    p_chi2 = math.erfc(math.sqrt(chi2 / 2))
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    p_exact = min(1.0, 2 * tail / 2**n)
    return McNemar(b, c, float(chi2), p_chi2, p_exact)


def entropy(codes: np.ndarray, k: int) -> float:
    """H of the empirical class distribution, nats."""
    p = np.bincount(codes, minlength=k) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def log_loss(proba: np.ndarray, codes: np.ndarray, floor: float = 1e-15) -> float:
    """Mean −ln p(true class), nats; probabilities clipped at `floor`."""
    return float(-np.log(np.clip(proba[np.arange(len(codes)), codes], floor, 1.0)).mean())


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class SummedMI:
    """The sum over features of each feature's own MI with the class, minus the mean of the same
    sum over label shuffles: NOT the joint MI of the features (it can exceed H(class))."""

    raw: float
    null_mean: float
    net: float
    per_feature: tuple[float, ...]
    n_shuffles: int

    def to_dict(self) -> dict:
        return {
            "raw": self.raw,
            "null_mean": self.null_mean,
            "net": self.net,
            "per_feature": list(self.per_feature),
            "n_shuffles": self.n_shuffles,
        }


@dataclass(frozen=True)
class MarginalMI:
    """Each feature's own MI with the class (scikit-learn's `mutual_info_classif`, k-NN, 3
    neighbours) and its mean over label shuffles; computed once for every feature of every set, so
    a set's summed MI is the sum of its features' (and geometry_7's is geometry_6's plus
    spectral's, exactly)."""

    names: tuple[str, ...]
    raw: tuple[float, ...]
    null_mean: tuple[float, ...]
    n_shuffles: int

    def summed(self, features: Sequence[str]) -> SummedMI:
        idx = [self.names.index(f) for f in features]
        raw = float(sum(self.raw[i] for i in idx))
        null = float(sum(self.null_mean[i] for i in idx))
        return SummedMI(raw, null, raw - null, tuple(self.raw[i] for i in idx), self.n_shuffles)


def marginal_mi(
    x: np.ndarray, names: Sequence[str], codes: np.ndarray, shuffles: int, seed: int
) -> MarginalMI:
    fs = sklearn_module("feature_selection")
    rng = np.random.default_rng(seed)

    def per_feature(labels: np.ndarray) -> np.ndarray:
        return fs.mutual_info_classif(x, labels, discrete_features=False, n_neighbors=3, random_state=seed)

    raw = per_feature(codes)
    null = np.array([per_feature(rng.permutation(codes)) for _ in range(shuffles)]).reshape(
        shuffles, len(names)
    )
    null_mean = null.mean(axis=0) if shuffles else np.zeros(len(names))
    return MarginalMI(
        tuple(names), tuple(float(v) for v in raw), tuple(float(v) for v in null_mean), shuffles
    )


@dataclass(frozen=True)
class Anova:
    f: float | None
    p: float | None
    groups: dict[str, int]

    def to_dict(self) -> dict:
        return {"f": self.f, "p": self.p, "n_per_group": dict(self.groups)}


def anova(values: dict[str, list[float]]) -> Anova:
    """One-way ANOVA (scipy.stats.f_oneway) over the groups with at least one value; None where
    fewer than two groups or no within-group spread leave F undefined."""
    groups = {k: v for k, v in values.items() if v}
    sizes = {k: len(v) for k, v in groups.items()}
    if len(groups) < 2 or sum(sizes.values()) <= len(groups):
        return Anova(None, None, sizes)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scipy_stats().f_oneway(*groups.values())
    f, p = float(res.statistic), float(res.pvalue)
    return Anova(f if math.isfinite(f) else None, p if math.isfinite(p) else None, sizes)
