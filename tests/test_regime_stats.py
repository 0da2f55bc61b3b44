"""regime statistics against independent truth: scikit-learn classifiers on the same folds, scipy's
binomial test / chi-square / ANOVA, DFA on series of known exponent and a hand-worked case."""

from __future__ import annotations

import math

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
scipy_stats = pytest.importorskip("scipy.stats")

from sklearn.linear_model import LogisticRegression, RidgeClassifier  # noqa: E402
from sklearn.neighbors import NearestCentroid  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from lorascope.regime.classifiers import Options, logo_folds, logo_scores  # noqa: E402
from lorascope.regime.stats import anova, dfa_alpha, dfa_scales, fluctuation, mcnemar  # noqa: E402


def design(seed=0, n_per=6, k=5, d=4, spread=0.6):
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(k), n_per)
    x = rng.normal(size=(len(codes), d)) * np.array([1.0, 10.0, 0.1, 3.0][:d]) + spread * codes[:, None]
    groups = [str(i % n_per) for i in range(len(codes))]  # one run of each class per group
    return x, codes, groups


def sklearn_logo(make, x, codes, groups):
    pred = np.empty(len(codes), dtype=int)
    proba = np.zeros((len(codes), codes.max() + 1))
    for g in dict.fromkeys(groups):
        te = np.array([h == g for h in groups])
        scaler = StandardScaler().fit(x[~te])
        clf = make().fit(scaler.transform(x[~te]), codes[~te])
        pred[te] = clf.predict(scaler.transform(x[te]))
        if hasattr(clf, "predict_proba"):
            proba[te] = clf.predict_proba(scaler.transform(x[te]))
    return pred, proba


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("ridge", lambda: RidgeClassifier(alpha=0.01)),
        ("centroid", NearestCentroid),
        ("logistic", lambda: LogisticRegression(C=1.0, tol=1e-12, max_iter=100_000)),
    ],
)
def test_logo_predictions_equal_sklearn_on_the_same_folds(kind, make, seed):
    x, codes, groups = design(seed)
    scores = logo_scores(kind, x, codes[None, :], 5, logo_folds(groups), Options())[0]
    pred, proba = sklearn_logo(make, x, codes, groups)
    np.testing.assert_array_equal(scores.argmax(axis=1), pred)
    assert (scores.argmax(axis=1) == codes).mean() == (pred == codes).mean()
    if kind == "logistic":
        np.testing.assert_allclose(scores, proba, atol=1e-5)


def test_batched_shuffles_equal_one_at_a_time():
    x, codes, groups = design(3)
    rng = np.random.default_rng(0)
    perms = np.array([rng.permutation(codes) for _ in range(4)])
    folds = logo_folds(groups)
    for kind in ("ridge", "centroid", "logistic"):
        batch = logo_scores(kind, x, perms, 5, folds, Options())
        for i in range(4):
            one = logo_scores(kind, x, perms[i : i + 1], 5, folds, Options())[0]
            np.testing.assert_allclose(batch[i], one, atol=1e-7)


def test_ridge_on_one_hot_masks_middle_classes():
    """One feature, five well-separated ordered classes: least squares on indicators predicts only
    the two extreme classes (40 %), nearest centroid gets them all."""
    codes = np.repeat(np.arange(5), 8)
    rng = np.random.default_rng(0)
    x = (codes + 0.05 * rng.normal(size=len(codes)))[:, None]
    groups = [str(i % 8) for i in range(len(codes))]
    folds = logo_folds(groups)
    ridge = logo_scores("ridge", x, codes[None], 5, folds, Options())[0].argmax(1)
    cent = logo_scores("centroid", x, codes[None], 5, folds, Options())[0].argmax(1)
    assert set(ridge) == {0, 4} and (ridge == codes).mean() == pytest.approx(0.4)
    assert (cent == codes).mean() == 1.0


@pytest.mark.parametrize(("b", "c"), [(21, 1), (5, 5), (0, 3), (7, 2), (1, 0), (30, 12)])
def test_mcnemar_against_scipy(b, c):
    first = [True] * b + [False] * c + [True] * 4 + [False] * 3
    second = [False] * b + [True] * c + [True] * 4 + [False] * 3
    m = mcnemar(first, second)
    assert (m.b, m.c) == (b, c)
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    assert m.chi2 == pytest.approx(chi2)
    assert m.p_chi2 == pytest.approx(scipy_stats.chi2.sf(chi2, 1), rel=1e-9)
    assert m.p_exact == pytest.approx(scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_of_the_post():
    m = mcnemar([True] * 21 + [False], [False] * 21 + [True])
    assert m.chi2 == pytest.approx(16.409, abs=1e-3)  # the post's 16.41
    assert m.p_chi2 == pytest.approx(5.1e-5, rel=0.01)


def test_mcnemar_without_discordant_runs():
    m = mcnemar([True, False], [True, False])
    assert (m.chi2, m.p_chi2, m.p_exact) == (0.0, 1.0, 1.0)


def test_anova_against_scipy():
    rng = np.random.default_rng(0)
    groups = {k: list(rng.normal(i, 1.0, size=5 + i)) for i, k in enumerate("abcd")}
    got = anova(groups)
    ref = scipy_stats.f_oneway(*groups.values())
    assert got.f == pytest.approx(ref.statistic) and got.p == pytest.approx(ref.pvalue)
    assert anova({"a": [1.0, 2.0]}).f is None


def test_dfa_scales_follow_the_recipe():
    assert list(dfa_scales(28)) == [4, 5, 6, 7]
    n = 200
    expect = sorted({int(v) for v in np.logspace(math.log10(4), math.log10(n / 4), 20)})
    assert list(dfa_scales(n)) == expect
    assert len(dfa_scales(15)) == 0


def test_fluctuation_hand_worked():
    # one segment y = 0, 1, 0, 1 at t = 0..3: the line 0.2 + 0.2 t leaves −0.2, 0.6, −0.6, 0.2,
    # mean square 0.2; two identical segments: F = √0.2
    assert fluctuation(np.array([0, 1, 0, 1, 0, 1, 0, 1.0]), 4) == pytest.approx(math.sqrt(0.2))
    # a straight profile has no fluctuation; the third, partial segment is left out
    assert fluctuation(np.arange(10.0), 4) == pytest.approx(0.0, abs=1e-12)


def test_dfa_alpha_against_an_independent_loop():
    rng = np.random.default_rng(5)
    x = rng.normal(size=300)
    y = np.cumsum(x - x.mean())
    logs, logf = [], []
    for s in sorted({int(v) for v in np.logspace(math.log10(4), math.log10(300 / 4), 20)}):
        rms = []
        for j in range(len(y) // s):
            seg = y[j * s : (j + 1) * s]
            t = np.arange(s)
            fit = np.polyval(np.polyfit(t, seg, 1), t)
            rms.append(np.sqrt(np.mean((seg - fit) ** 2)))
        logs.append(math.log(s))
        logf.append(math.log(np.mean(rms)))
    assert dfa_alpha(x) == pytest.approx(np.polyfit(logs, logf, 1)[0], abs=1e-9)


@pytest.mark.parametrize("n", [200, 500, 2000])
def test_dfa_known_exponents(n):
    rng = np.random.default_rng(n)
    white = [dfa_alpha(rng.normal(size=n)) for _ in range(10)]
    walk = [dfa_alpha(np.cumsum(rng.normal(size=n))) for _ in range(10)]
    assert np.mean(white) == pytest.approx(0.5, abs=0.1)
    assert np.mean(walk) == pytest.approx(1.5, abs=0.12)


def test_dfa_undefined_cases():
    assert dfa_alpha(np.ones(100)) is None  # no fluctuation at any scale
    assert dfa_alpha(np.arange(12.0)) is None  # too short for 4 scales
    assert dfa_alpha([1.0, float("nan")] * 20) is None
