"""merge/methods.py against plain dense numpy references written here; merge.dense.dense_truncated_svd
against np.linalg.svd and known spectra."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from lorascope.errors import InvalidArgumentError
from lorascope.merge import dense as spectral_dense
from lorascope.merge import methods as mm
from lorascope.merge.dense import dense_truncated_svd
from lorascope.merge.methods import METHODS, MergeMethod, get_method, register

OUT, IN = 20, 30
RANKS = (2, 4, 3)
SCALES = (0.5, 2.0, 1.0)
WEIGHTS = (0.7, -0.3, 1.2)  # one negative weight: sign election and Σ|w| must use the weighted values


@pytest.fixture
def factors():
    rng = np.random.default_rng(0)
    pairs = zip(RANKS, SCALES, strict=True)
    return [(rng.standard_normal((r, IN)), rng.standard_normal((OUT, r)), s) for r, s in pairs]


@pytest.fixture
def deltas(factors):
    return [s * u @ d for d, u, s in factors]


def weighted_sum(deltas, weights):
    return sum(w * x for w, x in zip(weights, deltas, strict=True))


# ---- dense references: direct transcriptions of the definitions, stacked arrays, no tricks ----


def ref_trim(x, density):
    k = int(np.floor(density * x.size + 0.5))
    keep = np.zeros(x.size, dtype=bool)
    if k:
        keep[np.argpartition(np.abs(x).ravel(), -k)[-k:]] = True
    return np.where(keep.reshape(x.shape), x, 0.0)


def ref_dare(xs, density, seed):
    rng = np.random.default_rng(seed)
    return [np.where(rng.random(x.shape, dtype=np.float32) < density, x / density, 0.0) for x in xs]


def ref_elect_merge(ts, weights, majority, normalize):
    w = np.asarray(weights)
    v = np.stack([wi * t for wi, t in zip(w, ts, strict=True)])  # (n, out, in)
    score = v.sum(axis=0) if majority == "total" else np.sign(v).sum(axis=0)
    elected = np.where(score >= 0, 1.0, -1.0)
    chosen = np.sign(v) == elected  # (n, out, in): non-zero and of the elected sign
    merged = (v * chosen).sum(axis=0)
    if not normalize:
        return merged
    denom = (np.abs(w)[:, None, None] * chosen).sum(axis=0)
    return np.divide(merged, denom, out=np.zeros_like(merged), where=denom > 0)


def best_rank_k(x, k):
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


# ---- factor methods ----


def test_linear_is_exact_concatenation(factors, deltas):
    down, up = mm.linear(factors, WEIGHTS)
    assert down.shape == (sum(RANKS), IN) and up.shape == (OUT, sum(RANKS))
    assert down.dtype == up.dtype == np.float64
    np.testing.assert_allclose(up @ down, weighted_sum(deltas, WEIGHTS), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rank", [None, 1, 5, 9, 50])
def test_svd_rank_is_best_approximation(factors, deltas, rank):
    down, up = mm.svd(factors, WEIGHTS, rank=rank)
    k = min(max(RANKS) if rank is None else rank, sum(RANKS))
    assert down.shape == (k, IN) and up.shape == (OUT, k)
    truth = best_rank_k(weighted_sum(deltas, WEIGHTS), k)
    assert np.linalg.norm(up @ down - truth) <= 1e-10 * np.linalg.norm(truth)
    # S sits in up: the rows of down are orthonormal
    np.testing.assert_allclose(down @ down.T, np.eye(k), atol=1e-12)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 1.0])
def test_svd_energy_picks_smallest_k(factors, deltas, energy):
    s = np.linalg.svd(weighted_sum(deltas, WEIGHTS), compute_uv=False)[: sum(RANKS)]
    cum = np.cumsum(s**2) / np.sum(s**2)
    k = next(i + 1 for i, c in enumerate(cum) if c >= energy - 1e-12)
    down, _ = mm.svd(factors, WEIGHTS, energy=energy)
    assert down.shape[0] == k
    down, _ = mm.svd(factors, WEIGHTS, energy=energy, rank=2)
    assert down.shape[0] == min(k, 2)


def test_svd_zero_update_keeps_one_zero_direction(factors):
    d, u, s = factors[0]
    down, up = mm.svd([(d, np.zeros_like(u), s)], [1.0], energy=0.9)
    assert down.shape == (1, IN)
    assert np.allclose(up @ down, 0.0, atol=1e-12)


# ---- dense methods ----


@pytest.mark.parametrize("majority", ["total", "frequency"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("density", [0.2, 0.8, 1.0])
def test_ties(deltas, majority, normalize, density):
    got = mm.ties(deltas, WEIGHTS, density=density, majority=majority, normalize=normalize)
    want = ref_elect_merge([ref_trim(x, density) for x in deltas], WEIGHTS, majority, normalize)
    assert got.shape == (OUT, IN) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block", [1, 2 * IN + 1, 10**9])  # one row, a few rows, the whole layer per block
@pytest.mark.parametrize("majority", ["total", "frequency"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_ties_row_blocks_give_the_same_merge(deltas, monkeypatch, block, majority, overwrite):
    """The disjoint merge runs one block of rows at a time: any block size, in place or not, is
    the reference (sign ties, zero contributors and a negative weight included)."""
    monkeypatch.setattr(mm, "_BLOCK", block)
    xs = [x.copy() for x in deltas]
    xs[1][0] = -xs[0][0] * WEIGHTS[0] / WEIGHTS[1]  # row 0: the weighted sum is exactly zero in places
    xs[2][1] = 0.0  # row 1: one input contributes nothing
    want = ref_elect_merge([ref_trim(x, 0.6) for x in xs], WEIGHTS, majority, True)
    got = mm.ties([x.copy() for x in xs], WEIGHTS, density=0.6, majority=majority, overwrite=overwrite)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("majority", ["total", "frequency"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("density", [0.3, 0.9])
def test_dare_ties(deltas, majority, normalize, density):
    rng = np.random.default_rng(7)
    got = mm.dare_ties(deltas, WEIGHTS, density=density, rng=rng, majority=majority, normalize=normalize)
    want = ref_elect_merge(ref_dare(deltas, density, 7), WEIGHTS, majority, normalize)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("density", [0.3, 1.0])
def test_dare_linear(deltas, density):
    got = mm.dare_linear(deltas, WEIGHTS, density=density, rng=np.random.default_rng(3))
    want = weighted_sum(ref_dare(deltas, density, 3), WEIGHTS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if density == 1.0:
        np.testing.assert_allclose(got, weighted_sum(deltas, WEIGHTS), rtol=1e-12, atol=1e-12)


def test_dare_keeps_about_density_and_is_seeded():
    x = np.ones((100, 100))
    a = mm.dare_linear([x], [1.0], density=0.25, rng=np.random.default_rng(1))
    b = mm.dare_linear([x], [1.0], density=0.25, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, 4.0}
    assert abs(np.count_nonzero(a) / a.size - 0.25) < 0.02  # 10⁴ Bernoulli draws: σ ≈ 0.0043


@pytest.mark.parametrize("density", [0.05, 0.5, 1.0])
def test_magnitude_prune(deltas, density):
    got = mm.magnitude_prune(deltas, WEIGHTS, density=density)
    want = weighted_sum([ref_trim(x, density) for x in deltas], WEIGHTS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_trim_keeps_exactly_round_density_size_on_ties():
    x = np.ones((4, 5))
    got = mm.magnitude_prune([x], [1.0], density=0.5)
    assert np.count_nonzero(got) == 10
    np.testing.assert_array_equal(got.ravel()[:10], 1.0)  # ties at the threshold: first in C order
    assert np.count_nonzero(mm.magnitude_prune([x], [1.0], density=0.01)) == 0  # round(0.2) = 0


def test_ties_no_contributor_gives_zero():
    a = np.array([[1.0, -2.0]])
    got = mm.ties([a, -a], [1.0, 1.0], density=1.0)
    # column 0: sum 0 elects +, only a contributes; column 1: sum 0 elects +, only -a contributes
    np.testing.assert_array_equal(got, [[1.0, 2.0]])
    np.testing.assert_array_equal(mm.ties([a, a], [0.0, 0.0], density=1.0), [[0.0, 0.0]])


# ---- the whole registry ----


def test_registry_entries_are_complete():
    assert {"linear", "svd", "ties", "dare_ties", "dare_linear", "magnitude_prune"} <= set(METHODS)
    for name, m in METHODS.items():
        assert m.name == name and m.kind in mm.KINDS
        assert m.fn.__doc__ and m.summary
        sig = inspect.signature(m.fn).parameters
        assert set(m.params) <= set(sig)
        assert ("rng" in sig) == m.needs_rng


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_returns_a_single_update_unchanged(name, factors, deltas):
    m = get_method(name)
    kwargs = {"rng": np.random.default_rng(0)} if m.needs_rng else {}
    if "density" in m.params:
        kwargs["density"] = 1.0
    if m.kind == "factor":
        down, up = m.fn(factors[1:2], [1.0], **kwargs)
        got = up @ down
    else:
        got = m.fn(deltas[1:2], [1.0], **kwargs)
    np.testing.assert_allclose(got, deltas[1], rtol=0, atol=1e-12)


def test_register_rejects_duplicates_and_bad_entries():
    m = METHODS["ties"]
    with pytest.raises(ValueError, match="duplicate merge method 'ties'"):
        register([m, m])
    with pytest.raises(ValueError, match="kind must be one of"):
        register([MergeMethod("x", "sparse", mm.ties, (), "x")])
    with pytest.raises(ValueError, match="fn has no parameter gamma"):
        register([MergeMethod("x", "dense", mm.ties, ("gamma",), "x")])


def test_unknown_method_lists_known_names():
    with pytest.raises(InvalidArgumentError) as err:
        get_method("slerp")
    assert str(err.value) == f"unknown merge method 'slerp'; choose one of {', '.join(METHODS)}"
    assert "linear, svd, ties, dare_ties, dare_linear" in str(err.value)


# ---- bad input: one-line InvalidArgumentError ----


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: mm.ties(d, WEIGHTS, density=0.0), "density must be in (0, 1] (1 − drop rate), got 0.0"),
        (lambda d: mm.ties(d, WEIGHTS, density=1.5), "density must be in (0, 1] (1 − drop rate), got 1.5"),
        (lambda d: mm.magnitude_prune(d, WEIGHTS, density=float("nan")), "density must be in (0, 1]"),
        (lambda d: mm.ties(d, WEIGHTS[:2]), "expected 3 weights (one per adapter), got 2"),
        (lambda d: mm.ties(d, [1.0, float("inf"), 1.0]), "weights must be finite, got [1.0, inf, 1.0]"),
        (lambda d: mm.ties([], []), "merge needs at least one adapter"),
        (
            lambda d: mm.ties([d[0], d[1].T], [1, 1]),
            "deltas must all have one shape, got [(20, 30), (30, 20)]",
        ),
        (
            lambda d: mm.ties(d, WEIGHTS, majority="sum"),
            "majority must be one of total, frequency, got 'sum'",
        ),
        (lambda d: mm.dare_linear(d, WEIGHTS, rng=None), "DARE needs rng=np.random.Generator"),
    ],
)
def test_dense_bad_input(deltas, call, message):
    with pytest.raises(InvalidArgumentError) as err:
        call(deltas)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_factor_bad_input(factors):
    d, u, s = factors[0]
    with pytest.raises(InvalidArgumentError, match=r"layer shape \(out, in\)"):
        mm.linear([factors[0], (d[:, :5], u, s)], [1, 1])
    with pytest.raises(InvalidArgumentError, match="adapter 1: down"):
        mm.linear([(d, u[:, :1], s)], [1])
    with pytest.raises(InvalidArgumentError, match="adapter 1: factors or scale contain NaN"):
        mm.svd([(d, u, float("nan"))], [1])
    with pytest.raises(InvalidArgumentError, match="rank must be an integer ≥ 1, got 0"):
        mm.svd(factors, WEIGHTS, rank=0)
    with pytest.raises(InvalidArgumentError, match=r"energy must be in \(0, 1\], got 1.2"):
        mm.svd(factors, WEIGHTS, energy=1.2)


# ---- merge.dense.dense_truncated_svd ----


def known_spectrum(m, n, sigma, seed=0):
    """m×n matrix U diag(σ) Vᵀ with random orthonormal U (m, r), V (n, r)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, sigma.size)))
    v, _ = np.linalg.qr(rng.standard_normal((n, sigma.size)))
    return (u * sigma) @ v.T


def reconstruct(t):
    return (t.u * t.s) @ t.vt


@pytest.mark.parametrize("rank", [1, 5, 29])
def test_dense_svd_exact_route(rank):
    x = np.random.default_rng(2).standard_normal((40, 29))
    t = dense_truncated_svd(x, rank)
    assert t.u.shape == (40, rank) and t.s.shape == (rank,) and t.vt.shape == (rank, 29)
    truth = best_rank_k(x, rank)
    assert np.linalg.norm(reconstruct(t) - truth) <= 1e-10 * np.linalg.norm(truth)


@pytest.fixture(scope="module")
def decaying():
    sigma = np.exp(-np.arange(200) / 5.0)  # σᵢ = e^{-i/5}: fast decay, exact tail known
    return known_spectrum(1500, 1200, sigma, seed=4), sigma


def test_dense_svd_fast_route_equals_the_exact_truncation(decaying, monkeypatch):
    x, sigma = decaying
    calls, real = [], spectral_dense.top_k
    monkeypatch.setattr(spectral_dense, "top_k", lambda *a: calls.append(a[1]) or real(*a))
    k = 20
    t = dense_truncated_svd(x, k, seed=1)
    assert calls == [20]  # the converged iteration answered: no exact SVD
    assert t.u.shape == (1500, k) and t.vt.shape == (k, 1200)
    truth = best_rank_k(x, k)
    assert np.linalg.norm(reconstruct(t) - truth) <= 1e-8 * np.linalg.norm(truth)
    np.testing.assert_allclose(t.s, sigma[:k], rtol=1e-10)
    np.testing.assert_array_equal(dense_truncated_svd(x, k, seed=1).s, t.s)  # seeded


@pytest.mark.slow
def test_dense_svd_energy_mode(decaying):
    x, sigma = decaying
    cum = np.cumsum(sigma**2) / np.sum(sigma**2)
    k_true = 12
    energy = 0.5 * (cum[k_true - 2] + cum[k_true - 1])  # midway: needs exactly 12 directions
    assert dense_truncated_svd(x, energy=energy).s.size == k_true  # converged iteration
    assert spectral_dense._exact(x).truncate(k_true).s.size == k_true
    assert dense_truncated_svd(x, rank=5, energy=energy).s.size == 5
    small = known_spectrum(30, 20, np.array([4.0, 3.0, 2.0, 1.0]))  # σ² cum: 16, 25, 29, 30
    assert dense_truncated_svd(small, energy=25 / 30).s.size == 2  # boundary counts as reached
    assert dense_truncated_svd(small, energy=0.84).s.size == 3


def test_dense_svd_edge_cases():
    z = dense_truncated_svd(np.zeros((6, 4)), rank=3)
    assert z.s.shape == (3,) and np.all(z.s == 0) and z.u.shape == (6, 3)
    assert dense_truncated_svd(np.zeros((6, 4)), energy=0.9).s.shape == (1,)
    assert dense_truncated_svd(np.ones((6, 4)), rank=10).s.shape == (4,)  # clipped to min(m, n)
    assert dense_truncated_svd(np.ones((6, 4))).s.shape == (4,)
    with pytest.raises(ValueError, match="rank must be ≥ 1"):
        dense_truncated_svd(np.ones((6, 4)), rank=0)
