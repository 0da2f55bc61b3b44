"""metrics.py: every metric vs its definition on a dense numpy SVD, and on known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import dense_sigma, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope import metrics
from lorascope.metrics import Spectrum, compute, energy_key, energy_rank
from lorascope.spectral import lora_singular_values

REL = 1e-6


def reference(sigma: np.ndarray, r: int, taus) -> dict[str, float]:
    """Textbook definitions on a dense SVD (all min(m, n) values; the zeros contribute nothing)."""
    s = np.sort(np.asarray(sigma, np.float64))[::-1]
    s = s[s > 1e-9 * s[0]]  # drop the dense SVD's round-off floor (≈1e-16·σ₁)
    e = np.sum(s**2)
    nz = s[s > 1e-6 * s[0]]  # effective rank: over the numerically non-zero part
    p = nz / nz.sum()
    out = {
        "sigma_max": s[0],
        "frobenius": math.sqrt(e),
        "stable_rank": e / s[0] ** 2,
        "effective_rank": math.exp(-np.sum(p * np.log(p))),
        "utilisation": e / s[0] ** 2 / r,
        "numerical_rank": int(np.sum(s > 1e-6 * s[0])),
    }
    cum = np.cumsum(s**2)
    for tau in taus:
        out[energy_key(tau)] = next(i + 1 for i, c in enumerate(cum) if c >= tau * e * (1 - 1e-12))
    return out


def energy_is_borderline(sigma: np.ndarray, tau: float) -> bool:
    """True when some partial sum lies within 1e-9 of τ·total: rounding may legitimately pick k±1."""
    s = sigma[sigma > 1e-9 * sigma[0]]
    cum = np.cumsum(s**2)
    return bool(np.any(np.abs(cum - tau * cum[-1]) <= 1e-9 * cum[-1]))


@settings(max_examples=150, deadline=None)
@given(
    out=st.integers(2, 60),
    inn=st.integers(2, 60),
    r=st.integers(1, 16),
    dtype=st.sampled_from(["fp64", "fp32", "fp16", "bf16"]),
    scale=st.sampled_from([1.0, 4.0, 0.0625, -2.0]),
    decay=st.sampled_from([None, 0.8, 0.5, 0.1]),
    seed=st.integers(0, 2**31),
)
def test_every_metric_matches_dense_svd(out, inn, r, dtype, scale, decay, seed):
    rng = np.random.default_rng(seed)
    a = quantize(rng.standard_normal((r, inn)), dtype)
    b = quantize(rng.standard_normal((out, r)) * (decay ** np.arange(r) if decay else 1.0), dtype)
    taus = (0.5, 0.9, 0.99, 1.0)
    truth_sigma = dense_sigma(a, b, scale)
    if truth_sigma[0] == 0:
        return
    # numerical rank needs a gap around the 1e-6 cut-off to be well defined
    if np.any(np.abs(truth_sigma / truth_sigma[0] - 1e-6) < 5e-7):
        return
    ref = reference(truth_sigma, r, taus)
    got = compute(Spectrum(lora_singular_values(a, b, scale), r), taus)
    assert set(got) == set(ref)
    for name, value in ref.items():
        if name.startswith("energy_rank"):
            if not energy_is_borderline(truth_sigma, float(name.split("@")[1])):
                assert got[name] == value, name
        elif name == "numerical_rank":
            assert got[name] == value
        else:
            assert abs(got[name] - value) <= REL * abs(value), (name, got[name], value)


def spec(values, r=None) -> Spectrum:
    s = np.asarray(values, dtype=np.float64)
    return Spectrum(s, r if r is not None else s.size)


def test_equal_singular_values():
    s = spec([3.0] * 8)
    assert metrics.stable_rank(s) == pytest.approx(8.0, rel=1e-15)
    assert metrics.effective_rank(s) == pytest.approx(8.0, rel=1e-14)
    assert metrics.utilisation(s) == pytest.approx(1.0)
    assert energy_rank(s, 1.0) == 8  # τ = 1 needs every direction, not one more, not NaN
    assert energy_rank(s, 0.5) == 4  # exact boundary: 4·9 = 0.5·72
    assert energy_rank(s, 0.5 + 1e-9) == 5
    assert energy_rank(s, 0.125) == 1
    assert metrics.numerical_rank(s) == 8


def test_energy_rank_exact_boundaries():
    s = spec(np.sqrt([4.0, 3.0, 2.0, 1.0]))  # energies 4, 3, 2, 1 of 10
    assert [energy_rank(s, t) for t in (0.4, 0.7, 0.9, 1.0)] == [1, 2, 3, 4]
    assert [energy_rank(s, t) for t in (0.41, 0.71, 0.91)] == [2, 3, 4]
    assert energy_rank(s, 1e-9) == 1


def test_energy_rank_with_trailing_zeros():
    s = spec([2.0, 1.0, 0.0, 0.0], r=4)
    assert energy_rank(s, 1.0) == 2
    assert metrics.numerical_rank(s) == 2
    assert metrics.effective_rank(s) == pytest.approx(
        math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    )


def test_single_direction():
    s = spec([5.0, 0.0, 0.0], r=3)
    values = compute(s, (0.9, 1.0))
    assert values == {
        "sigma_max": 5.0,
        "frobenius": 5.0,
        "stable_rank": 1.0,
        "effective_rank": 1.0,
        "utilisation": pytest.approx(1 / 3),
        "numerical_rank": 1,
        "energy_rank@0.9": 1,
        "energy_rank@1": 1,
    }


def test_numerical_rank_cutoff():
    s = spec([1.0, 2e-6, 5e-7, 1e-12], r=4)
    assert metrics.numerical_rank(s) == 2
    assert metrics.numerical_rank(s, rtol=1e-13) == 4


@pytest.mark.parametrize("values", [[0.0] * 4, []])
def test_dead_layer_never_nan(values):
    s = spec(values, r=4)
    assert s.dead
    out = compute(s, (0.5, 0.9, 1.0))
    assert all(v == 0 and math.isfinite(v) for v in out.values()), out


def test_stable_rank_bounds_and_scale_invariance():
    rng = np.random.default_rng(4)
    for _ in range(20):
        s = np.sort(rng.random(10))[::-1]
        a, b = spec(s), spec(7.5 * s)
        assert 1.0 <= metrics.stable_rank(a) <= 10.0
        assert 1.0 <= metrics.effective_rank(a) <= 10.0
        assert metrics.stable_rank(a) == pytest.approx(metrics.stable_rank(b), rel=1e-14)
        assert metrics.effective_rank(a) == pytest.approx(metrics.effective_rank(b), rel=1e-14)


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.0001, float("nan")])
def test_energy_threshold_validated(tau):
    with pytest.raises(ValueError, match="energy threshold"):
        energy_rank(spec([1.0]), tau)


def test_energy_keys_are_distinct():
    keys = [energy_key(t) for t in (0.9, 0.95, 0.99, 0.999, 0.9999999, 1.0)]
    assert keys[:3] == ["energy_rank@0.9", "energy_rank@0.95", "energy_rank@0.99"]
    assert len(set(keys)) == len(keys)


def test_registry_is_complete_and_pure():
    assert list(metrics.METRICS) == [
        "sigma_max",
        "frobenius",
        "stable_rank",
        "effective_rank",
        "utilisation",
        "numerical_rank",
    ]
    s = spec([3.0, 2.0, 1.0])
    before = s.sigma.copy()
    for fn in metrics.METRICS.values():
        assert math.isfinite(fn(s))
    np.testing.assert_array_equal(s.sigma, before)


@pytest.mark.parametrize(("r", "live"), [(64, 1), (64, 4), (64, 32), (16, 1)])
def test_rank_deficient_layer(r, live):
    """Columns of B still zero: the Gram core's ~1e-8·σ₁ noise must not move any metric."""
    rng = np.random.default_rng(r + live)
    a = quantize(rng.standard_normal((r, 300)), "fp32")
    b = quantize(rng.standard_normal((400, r)), "fp32")
    b[:, live:] = 0.0
    truth = dense_sigma(a, b, 1.0)
    ref = reference(truth, r, (0.9, 1.0))
    got = compute(Spectrum(lora_singular_values(a, b), r), (0.9, 1.0))
    for name, value in ref.items():
        assert abs(got[name] - value) <= REL * abs(value), (name, got[name], value)
    assert got["numerical_rank"] == got["energy_rank@1"] == live


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6) | st.integers(0, 128) | st.just(math.nan), min_size=1, max_size=40),
    st.floats(0, 100),
)
def test_percentile_and_median_match_numpy_bit_for_bit(values, q):
    a = np.asarray(values, dtype=float)
    for ours, theirs in (
        (metrics.percentile(values, q), np.percentile(a, q)),
        (metrics.percentile(values, 50), np.percentile(a, 50)),
        (metrics.median(values), np.median(a)),
    ):
        assert ours == float(theirs) or (math.isnan(ours) and math.isnan(theirs))


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        metrics.percentile([], 50)
    with pytest.raises(ValueError):
        metrics.median([])
