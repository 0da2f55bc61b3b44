"""Verdicts and recommendations on constructed pairs with known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from lorascope.errors import InvalidArgumentError
from lorascope.merge.pairwise import pair_metrics
from lorascope.merge.verdict import Thresholds, classify, recommend
from lorascope.types import LayerInfo, LoraDelta


def delta(a, b, scale=1.0) -> LoraDelta:
    return LoraDelta(LayerInfo("l", "linear", a.shape[0], b.shape[0], a.shape[1], scale, "fp64"), a, b)


@pytest.fixture
def base(rng):
    """A 96×80 update of rank 8 with a decaying spectrum."""
    a = rng.standard_normal((8, 80)) / np.sqrt(80)
    b = rng.standard_normal((96, 8)) * 0.7 ** np.arange(8)
    return delta(a, b)


def orthogonal_to(d: LoraDelta, rng) -> LoraDelta:
    """An update whose row and column spaces are orthogonal to d's."""
    qa = np.linalg.qr(d.down.T)[0]  # (n, r) basis of d's row space
    qb = np.linalg.qr(d.up)[0]  # (m, r)
    a = rng.standard_normal((8, d.down.shape[1]))
    b = rng.standard_normal((d.up.shape[0], 8))
    a -= (a @ qa) @ qa.T
    b -= qb @ (qb.T @ b)
    return delta(a, b, np.linalg.norm(d.dense()) / np.linalg.norm(b @ a))


def verdict(d1, d2, t=None):
    return classify(pair_metrics(d1, d2), t or Thresholds())[0]


def test_identical_is_redundant(base):
    assert verdict(base, base) == "REDUNDANT"


def test_orthogonal_is_safe(base, rng):
    other = orthogonal_to(base, rng)
    p = pair_metrics(base, other)
    assert p.overlap < 1e-12 and abs(p.cosine) < 1e-12
    assert classify(p, Thresholds())[0] == "SAFE"


@pytest.mark.parametrize("factor", [1.5, 0.7])
def test_mildly_scaled_copy_is_redundant(base, factor):
    assert verdict(base, delta(base.down, base.up, factor)) == "REDUNDANT"


@pytest.mark.parametrize("factor", [10.0, 0.1])
def test_scaled_copy_is_imbalanced_not_redundant(base, factor):
    """Gradience 0.11 read a 10× gap as 'redundant'. Magnitude is checked before redundancy."""
    assert verdict(base, delta(base.down, base.up, factor)) == "IMBALANCED"


def test_orthogonal_but_imbalanced_is_imbalanced(base, rng):
    other = orthogonal_to(base, rng)
    assert verdict(base, delta(other.down, other.up, other.scale * 20)) == "IMBALANCED"


@pytest.mark.parametrize("factor", [-1.0, -5.0])
def test_opposite_sign_is_conflicting(base, factor):
    p = pair_metrics(base, delta(base.down, base.up, factor))
    assert p.agreement == pytest.approx(-1.0) and p.cosine == pytest.approx(-1.0)
    assert p.n_conflicting > 0 and p.sign_conflict == 1.0
    assert classify(p, Thresholds())[0] == "CONFLICTING"  # even when also imbalanced


def test_zero_side_is_imbalanced(base):
    zero = delta(base.down, np.zeros_like(base.up))
    v, reasons = classify(pair_metrics(base, zero), Thresholds())
    assert v == "IMBALANCED" and "second" in reasons[0] and "zero" in reasons[0]


def test_thresholds_are_configurable(base):
    copy = delta(base.down, base.up, 4.0)
    assert verdict(base, copy) == "IMBALANCED"
    assert verdict(base, copy, Thresholds(imbalance=5.0)) == "REDUNDANT"


def test_thresholds_validated():
    with pytest.raises(InvalidArgumentError):
        Thresholds(overlap_low=0.6, overlap_high=0.5)
    with pytest.raises(InvalidArgumentError):
        Thresholds(imbalance=0.5)


def averaged_sigma(d1, d2) -> np.ndarray:
    """Ground truth: singular values of ½(ΔW₁ + ΔW₂) from the dense matrices."""
    return np.linalg.svd(0.5 * (d1.dense() + d2.dense()), compute_uv=False)


def rec_for(d1, d2, ranks=(8, 8), t=None):
    t = t or Thresholds()
    p = pair_metrics(d1, d2)
    v = classify(p, t)[0]
    return v, recommend(p, v, ranks, t, averaged_sigma(d1, d2))


@pytest.mark.parametrize("strong_first", [True, False])
def test_rebalancing_damps_the_stronger_adapter_bounded(base, strong_first):
    """Gradience 0.11 gave (0.098, 0.902) whichever side was stronger."""
    big = delta(base.down, base.up, 16.0)
    v, rec = rec_for(big, base) if strong_first else rec_for(base, big)
    assert v == "IMBALANCED" and rec.method == "linear"
    strong, weak = (rec.weights[0], rec.weights[1]) if strong_first else (rec.weights[1], rec.weights[0])
    assert weak == 1.0 and strong == pytest.approx(0.25)  # 16^-½, at the lower bound
    _, mild = rec_for(delta(base.down, base.up, 4.0), base)
    assert mild.weights == pytest.approx((0.5, 1.0))
    huge = delta(base.down, base.up, 1e4)
    assert rec_for(huge, base)[1].weights[0] == Thresholds().min_weight


def test_trim_grows_with_overlap_and_drop_with_conflict(base, rng):
    _, same = rec_for(base, base)
    _, orth = rec_for(base, orthogonal_to(base, rng))
    _, opp = rec_for(base, delta(base.down, base.up, -1.0))
    assert same.trim == pytest.approx(0.5) and orth.trim == pytest.approx(0.1)
    assert 0.15 <= same.drop <= 0.5 and opp.drop == pytest.approx(0.5) and orth.drop == pytest.approx(0.15)
    assert same.method == "svd" and same.density is None and same.weights == (0.5, 0.5)
    assert opp.method == "dare_ties" and opp.density == pytest.approx(0.5)
    assert orth.method == "linear" and orth.density is None


@pytest.mark.parametrize("loss", [0.0, 0.02, 0.1, 0.3])
def test_redundant_pair_is_averaged_at_the_smallest_rank_within_the_loss(base, loss):
    """A copy truncated to rank 3 (as `compress` writes it): the average keeps base's directions;
    the recommended rank is the smallest k whose dropped tail is within `redundant_loss`."""
    u, s, vt = np.linalg.svd(base.dense(), full_matrices=False)
    copy = delta(vt[:3], u[:, :3] * s[:3])  # (3, n), (m, 3)
    v, rec = rec_for(base, copy, ranks=(8, 3), t=Thresholds(redundant_loss=loss))
    sigma = averaged_sigma(base, copy)
    tails = [np.sqrt(np.sum(sigma[k:] ** 2) / np.sum(sigma**2)) for k in range(1, 9)]
    want = next(k for k, tail in zip(range(1, 9), tails, strict=True) if tail <= loss + 1e-12)
    assert v == "REDUNDANT" and rec.method == "svd" and rec.weights == (0.5, 0.5)
    assert rec.rank == want and rec.compress_first == {}
    assert any(f"exact SVD at rank {want} keeps all but" in r for r in rec.reasons)
    assert not any(r.startswith("lossy:") for r in rec.reasons)


def test_redundant_needs_the_averaged_spectrum(base):
    p = pair_metrics(base, base)
    with pytest.raises(ValueError, match="needs the spectrum of the averaged update"):
        recommend(p, "REDUNDANT", (8, 8), Thresholds())
    with pytest.raises(InvalidArgumentError, match="redundant_loss"):
        Thresholds(redundant_loss=1.0)
