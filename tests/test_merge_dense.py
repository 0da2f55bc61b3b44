"""merge.dense: the top-k solver against numpy's full SVD on varied shapes (hypothesis).

The written factors of a dense merge must equal those of the exact truncation to 1e-6: the rank-k
product, the kept singular values, and the loss ‖M‖²_F − Σᵢ≤ₖ σᵢ², whichever route answered."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorascope.merge import dense as dense_mod
from lorascope.merge.dense import dense_truncated_svd, top_k
from lorascope.merge.methods import dare_ties, magnitude_prune, ties


def merged(rng, m: int, n: int, ranks: tuple[int, ...], method: str, density: float) -> np.ndarray:
    """A dense merge of random low-rank updates: full-rank, a few large σ and a long tail."""
    xs = [rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / np.sqrt(n) for r in ranks]
    if method == "ties":
        return ties(xs, [1.0] * len(xs), density=density)
    if method == "dare_ties":
        return dare_ties(xs, [1.0] * len(xs), density=density, rng=rng)
    return magnitude_prune(xs, [1.0] * len(xs), density=density)


def check_against_numpy(x: np.ndarray, k: int, got) -> None:
    u, s, vt = np.linalg.svd(x, full_matrices=False)  # the independent truth
    truth = (u[:, :k] * s[:k]) @ vt[:k]
    product = (got.u * got.s) @ got.vt
    assert np.linalg.norm(product - truth) <= 1e-6 * np.linalg.norm(truth)
    np.testing.assert_allclose(got.s, s[:k], rtol=0, atol=1e-6 * s[0])
    loss2 = float(np.vdot(x, x)) - float(np.sum(got.s**2))  # the exact loss from the top k only
    assert loss2 == pytest.approx(float(np.sum(s[k:] ** 2)), rel=1e-6, abs=1e-9 * s[0] ** 2)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(100, 420),
    n=st.integers(100, 420),
    ranks=st.lists(st.integers(1, 6), min_size=2, max_size=3).map(tuple),
    method=st.sampled_from(["ties", "dare_ties", "magnitude_prune"]),
    density=st.sampled_from([0.3, 0.8, 1.0]),
    seed=st.integers(0, 2**32 - 1),
    lanczos=st.booleans(),
)
def test_dense_merges_equal_the_full_svd_truncation(m, n, ranks, method, density, seed, lanczos):
    """Either solver (ARPACK, or the subspace iteration used without scipy) or the exact SVD."""
    rng = np.random.default_rng(seed)
    x = merged(rng, m, n, ranks, method, density)
    k = sum(ranks)  # the default output rank of a dense merge
    real = dense_mod._arpack
    dense_mod._arpack = real if lanczos else (lambda *a: None)
    try:
        got = dense_truncated_svd(x, k, seed=seed % 1000)
    finally:
        dense_mod._arpack = real
    check_against_numpy(x, k, got)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(
    shape=st.tuples(st.integers(90, 300), st.integers(90, 300)),
    k=st.integers(1, 8),
    ratio=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_known_spectra_with_any_gap(shape, k, ratio, seed):
    """σ_{k+1} = ratio·σ_k, from a clear gap to none (ratio 1: the iteration cannot tell the kth
    direction from the next; the exact SVD answers, and the product still matches)."""
    rng = np.random.default_rng(seed)
    p = min(shape)
    sigma = np.concatenate([np.linspace(3.0, 1.0, k), ratio * np.linspace(1.0, 0.5, p - k)])
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], p)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], p)))
    x = (u * sigma) @ v.T
    got = dense_truncated_svd(x, k, seed=1)
    if ratio < 0.999:
        check_against_numpy(x, k, got)
    else:  # a tie at the cut: only the spectrum and the loss are defined
        s = np.linalg.svd(x, compute_uv=False)
        np.testing.assert_allclose(got.s, s[:k], rtol=0, atol=1e-6 * s[0])


@pytest.mark.parametrize("lanczos", [True, False])
def test_typical_merges_take_the_fast_route(monkeypatch, rng, lanczos):
    """The speed is real: a 896×896 TIES merge at k = 12 never runs the full SVD, with scipy's
    ARPACK or (without scipy) the subspace iteration."""
    x = merged(rng, 896, 896, (8, 4), "ties", 0.8)

    def refuse(*args, **kwargs):
        raise AssertionError("full SVD called")

    monkeypatch.setattr(dense_mod, "_exact", refuse)
    if not lanczos:
        monkeypatch.setattr(dense_mod, "_arpack", lambda *a: None)
    got = dense_truncated_svd(x, 12, seed=0)
    monkeypatch.undo()
    check_against_numpy(x, 12, got)


def test_small_blocks_and_zero_matrices_use_the_exact_svd(rng):
    x = merged(rng, 128, 896, (8, 4), "ties", 0.8)
    assert top_k(x, 12) is None  # 8·l = 192 > 128: the exact SVD is as cheap
    check_against_numpy(x, 12, dense_truncated_svd(x, 12))
    z = dense_truncated_svd(np.zeros((400, 300)), 5)
    assert z.s.shape == (5,) and np.all(z.s == 0)
