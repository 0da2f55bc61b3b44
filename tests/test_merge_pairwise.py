"""Every pairwise merge metric against a dense numpy computation (rel. error ≤ 1e-6)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quantize, to_bf16_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorascope.merge.pairwise import (
    PairOptions,
    kth_largest,
    pair_metrics,
    sign_conflict,
    stacked_grams,
    weighted_sigma,
)
from lorascope.spectral import energy_k
from lorascope.types import LayerInfo, LoraDelta

TOL = 1e-6


def delta(a, b, scale=1.0, name="layer", dtype="fp64") -> LoraDelta:
    info = LayerInfo(name, "linear", a.shape[0], b.shape[0], a.shape[1], scale, dtype)
    return LoraDelta(info, a, b)


def dense_reference(d1: LoraDelta, d2: LoraDelta, opt: PairOptions) -> dict:
    """The definitions of pairwise.py, written out on dense matrices with numpy's SVD."""
    w1, w2 = d1.dense(), d2.dense()  # (m, n)
    u1, s1, v1 = np.linalg.svd(w1, full_matrices=False)
    u2, s2, v2 = np.linalg.svd(w2, full_matrices=False)
    k1, k2 = energy_k(s1, opt.energy), energy_k(s2, opt.energy)
    n1, n2 = np.linalg.norm(w1), np.linalg.norm(w2)
    uu, vv = u1[:, :k1].T @ u2[:, :k2], v1[:k1] @ v2[:k2].T
    g1 = np.array([u1[:, i] @ w2 @ v1[i] for i in range(k1)])
    g2 = np.array([u2[:, j] @ w1 @ v2[j] for j in range(k2)])
    den = np.sum(s1[:k1] * abs(g1)) + np.sum(s2[:k2] * abs(g2))
    full = np.linalg.norm(s1[:k1]) * n2 + np.linalg.norm(s2[:k2]) * n1
    m, n = w1.shape
    kmin, kmax = min(k1, k2), max(k1, k2)
    return {
        "k": (k1, k2),
        "norm1": n1,
        "norm2": n2,
        "cosine": np.sum(w1 * w2) / (n1 * n2),
        "overlap_left": np.sum(uu**2) / kmin,
        "overlap_right": np.sum(vv**2) / kmin,
        "chance_left": kmax / m,
        "chance_right": kmax / n,
        "cos_left": np.linalg.svd(uu, compute_uv=False),
        "cos_right": np.linalg.svd(vv, compute_uv=False),
        "agreement": (np.sum(s1[:k1] * g1) + np.sum(s2[:k2] * g2)) / den,
        "interference": den / full,
        "n_conflicting": int(
            np.sum(g1 <= -opt.conflict_projection * s2[0]) + np.sum(g2 <= -opt.conflict_projection * s1[0])
        ),
    }


def assert_matches(p, ref) -> None:
    assert (p.k1, p.k2) == ref["k"]
    for key in ("norm1", "norm2"):
        assert abs(getattr(p, key) - ref[key]) <= TOL * ref[key], key
    for key in (
        "cosine",
        "overlap_left",
        "overlap_right",
        "chance_left",
        "chance_right",
        "agreement",
        "interference",
    ):
        assert abs(getattr(p, key) - ref[key]) <= TOL * max(1.0, abs(ref[key])), key
    np.testing.assert_allclose(p.cos_left, np.clip(ref["cos_left"], 0, 1), atol=TOL)
    np.testing.assert_allclose(p.cos_right, np.clip(ref["cos_right"], 0, 1), atol=TOL)
    assert p.n_conflicting == ref["n_conflicting"]


def related_pair(rng, m, n, r1, r2, share: float, s1=1.0, s2=1.0):
    """Two updates whose first min(r1, r2) directions are `share` copies of each other plus noise."""
    a1, b1 = rng.standard_normal((r1, n)), rng.standard_normal((m, r1)) * 0.7 ** np.arange(r1)
    a2, b2 = rng.standard_normal((r2, n)), rng.standard_normal((m, r2)) * 0.6 ** np.arange(r2)
    k = min(r1, r2)
    a2[:k] = share * a1[:k] + (1 - share) * a2[:k]
    b2[:, :k] = share * b1[:, :k] + (1 - share) * b2[:, :k]
    return delta(a1, b1, s1), delta(a2, b2, s2)


@pytest.mark.parametrize("m,n,r1,r2", [(40, 30, 8, 4), (17, 65, 3, 9), (64, 64, 16, 16), (9, 7, 12, 2)])
@pytest.mark.parametrize("share", [0.0, 0.6, 0.95])
@pytest.mark.parametrize("scales", [(1.0, 1.0), (2.0, -0.5), (-1.5, 0.25)])
def test_metrics_match_dense(rng, m, n, r1, r2, share, scales):
    d1, d2 = related_pair(rng, m, n, r1, r2, share, *scales)
    opt = PairOptions()
    assert_matches(pair_metrics(d1, d2, opt), dense_reference(d1, d2, opt))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(2, 50),
    n=st.integers(2, 50),
    r1=st.integers(1, 10),
    r2=st.integers(1, 10),
    share=st.floats(0.0, 1.0),
    energy=st.sampled_from([0.5, 0.9, 0.99]),
    seed=st.integers(0, 2**31),
)
def test_metrics_match_dense_hypothesis(m, n, r1, r2, share, energy, seed):
    d1, d2 = related_pair(np.random.default_rng(seed), m, n, r1, r2, share, 1.3, -0.8)
    opt = PairOptions(energy=energy)
    assert_matches(pair_metrics(d1, d2, opt), dense_reference(d1, d2, opt))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_storage_dtypes(rng, dtype):
    """Factors as the readers hand them over (fp32/fp16 arrays, bf16 as float32 values)."""
    d1, d2 = related_pair(rng, 48, 36, 8, 6, 0.7)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    q = [quantize(x, dtype).astype(np_dtype) for x in (d1.down, d1.up, d2.down, d2.up)]
    e1, e2 = delta(q[0], q[1], 2.0, dtype=dtype), delta(q[2], q[3], 0.5, dtype=dtype)
    if dtype == "bf16":  # bit-exact bf16 values held in float32
        assert np.array_equal(quantize(e1.down, "bf16"), e1.down.astype(np.float64))
        assert to_bf16_bits(e1.down).dtype == np.uint16
    opt = PairOptions()
    assert_matches(pair_metrics(e1, e2, opt), dense_reference(e1, e2, opt))


def test_degenerate_spectrum_takes_the_qr_route(rng):
    """All σ equal (orthonormal factors): the top-k subspace is not separated, Gram route refused."""
    q1 = np.linalg.qr(rng.standard_normal((30, 6)))[0]  # (30, 6)
    q2 = np.linalg.qr(rng.standard_normal((20, 6)))[0]  # (20, 6)
    d1 = delta(q2.T.copy(), q1.copy(), 1.0)  # ΔW = Q1 Q2ᵀ: six equal singular values
    d2 = delta(rng.standard_normal((3, 20)), rng.standard_normal((30, 3)), 0.3)
    opt = PairOptions(energy=0.6)
    p = pair_metrics(d1, d2, opt)
    ref = dense_reference(d1, d2, opt)
    # with equal σ the dense SVD's subspace choice is arbitrary; only subspace-free metrics compare
    for key in ("norm1", "norm2", "cosine"):
        assert abs(getattr(p, key) - ref[key]) <= TOL * max(1.0, abs(ref[key]))
    assert (p.k1, p.k2) == ref["k"] and p.k1 == 4


def test_zero_update(rng):
    d1 = delta(rng.standard_normal((4, 10)), np.zeros((12, 4)))
    d2 = delta(rng.standard_normal((4, 10)), rng.standard_normal((12, 4)))
    p = pair_metrics(d1, d2)
    assert p.norm1 == 0 and p.k1 == 0 and p.cosine == 0 and p.magnitude_ratio == 0
    assert p.imbalance is None and p.overlap == 0 and p.agreement == 0 and p.sign_conflict is None


def test_chance_overlap_matches_random_subspaces():
    """E‖U₁ᵀU₂‖²_F = k₁k₂/d for random subspaces: the reported chance level is what random pairs get."""
    rng = np.random.default_rng(7)
    vals, chance = [], None
    for _ in range(200):
        d1 = delta(rng.standard_normal((6, 80)), rng.standard_normal((60, 6)))
        d2 = delta(rng.standard_normal((6, 80)), rng.standard_normal((60, 6)))
        p = pair_metrics(d1, d2, PairOptions(energy=1.0))
        vals.append(p.overlap_left)
        chance = p.chance_left
    assert chance == pytest.approx(6 / 60)
    assert np.mean(vals) == pytest.approx(chance, rel=0.1)


def dense_sign_conflict(w1, w2, density):
    keep = max(1, int(round(density * w1.size)))
    t1 = np.abs(w1) >= np.sort(np.abs(w1).ravel())[-keep]
    t2 = np.abs(w2) >= np.sort(np.abs(w2).ravel())[-keep]
    both = t1 & t2
    return np.mean(np.sign(w1[both]) != np.sign(w2[both]))


@pytest.mark.parametrize("density", [0.1, 0.2, 0.5])
def test_sign_conflict_exact(rng, density):
    d1, d2 = related_pair(rng, 50, 40, 6, 5, 0.5, 1.0, -1.0)
    rate, entries, sampled = sign_conflict(d1, d2, PairOptions(sign_density=density))
    assert not sampled and entries == 2000
    assert rate == pytest.approx(dense_sign_conflict(d1.dense(), d2.dense(), density), abs=1e-12)


def test_sign_conflict_known_geometry(rng):
    d1, _ = related_pair(rng, 30, 20, 5, 5, 0.0)
    same = sign_conflict(d1, delta(d1.down, d1.up, 3.0), PairOptions())[0]
    flipped = sign_conflict(d1, delta(d1.down, d1.up, -1.0), PairOptions())[0]
    assert same == 0.0 and flipped == 1.0


def test_sign_conflict_sampled_grid_is_deterministic_and_close(rng):
    d1, d2 = related_pair(rng, 300, 260, 8, 8, 0.5)
    opt = PairOptions(sign_exact_max=1000, sign_sample=120)
    rate, entries, sampled = sign_conflict(d1, d2, opt)
    assert sampled and entries == 120 * 120
    assert sign_conflict(d1, d2, opt)[0] == rate  # seeded from the layer name: reruns agree
    exact = dense_sign_conflict(d1.dense(), d2.dense(), opt.sign_density)
    assert abs(rate - exact) < 0.05  # a 14,400-entry sample of a proportion: σ ≈ 0.01


def test_options_are_validated():
    from lorascope.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError):
        PairOptions(energy=0)
    with pytest.raises(InvalidArgumentError):
        PairOptions(sign_sample=0)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["normal", "ties", "zeros", "sorted", "extremes"]),
    st.sampled_from([np.float32, np.float64]),
    st.floats(0.0, 1.0),
)
def test_kth_largest_is_a_full_partition(n, seed, kind, dtype, share):
    """The selection on bit patterns equals np.partition's k-th largest of the floats for every k:
    ties, zeros, sorted input, subnormals, +inf and the largest finite value included."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(n)).astype(dtype)
    if kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "zeros":
        x[rng.random(n) < 0.9] = 0
    elif kind == "sorted":
        x = np.sort(x)
    elif kind == "extremes":
        info = np.finfo(dtype)
        picks = np.array([0.0, info.smallest_subnormal, info.tiny, info.max, np.inf], dtype=dtype)
        x = np.where(rng.random(n) < 0.5, picks[rng.integers(0, picks.size, n)], x)
    k = min(n, 1 + int(share * n))
    assert kth_largest(x, k) == np.partition(x, n - k)[n - k]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    r1=st.integers(1, 9),
    r2=st.integers(1, 9),
    shared=st.floats(0.0, 1.0),
    w=st.tuples(st.sampled_from([0.5, -0.25, 1.0, 0.0, 3.0]), st.sampled_from([0.5, 2.0, -1.0])),
    big=st.sampled_from([1.0, 1e-150, 1e150]),
)
def test_weighted_sigma_equals_the_dense_svd_of_the_weighted_sum(seed, r1, r2, shared, w, big):
    """σ(w₁ΔW₁ + w₂ΔW₂) from the stacked Grams, against numpy's SVD of the dense sum: the pair
    may share directions (a redundant pair: near-singular stacked Grams), r₁+r₂ may exceed n,
    and factors of 1e±150 push the Grams to the ends of float64."""
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(6, 30)), int(rng.integers(6, 14))
    a1, b1 = rng.standard_normal((r1, n)), rng.standard_normal((m, r1))
    a2, b2 = rng.standard_normal((r2, n)), rng.standard_normal((m, r2))
    k = min(r1, r2)
    a2[:k] = shared * a1[:k] + (1 - shared) * a2[:k]  # shared = 1: the same input directions
    b2[:, :k] = shared * b1[:, :k] + (1 - shared) * b2[:, :k]
    d1, d2 = delta(a1 * big, b1, 0.7), delta(a2, b2 * big, -1.3)
    dense = w[0] * d1.dense() + w[1] * d2.dense()  # (m, n)
    want = np.linalg.svd(dense, compute_uv=False)  # (min(m, n),)
    got = weighted_sigma(d1, d2, w, stacked_grams(d1, d2))
    assert got.shape == (r1 + r2,)
    assert np.all(np.diff(got) <= 0) and np.all(got >= 0)
    want = np.concatenate([want, np.zeros(max(0, r1 + r2 - want.size))])[: r1 + r2]
    size = abs(w[0]) * np.linalg.norm(d1.dense()) + abs(w[1]) * np.linalg.norm(d2.dense())  # N
    if size == 0:
        assert np.all(got == 0)
        return
    big_ones = want >= 1e-3 * size
    np.testing.assert_allclose(got[big_ones], want[big_ones], rtol=1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7 * size)
