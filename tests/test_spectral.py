"""spectral.py against a dense numpy SVD of scale·B·A: random shapes, ranks, dtypes, known spectra."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dense_sigma, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from lorascope import spectral
from lorascope.merge.methods import stacked_svd
from lorascope.spectral import NonFiniteError, lora_singular_values, lora_svd

REL = 1e-6  # the bound, for σᵢ ≥ 1e-3·σ₁


def assert_sigma_close(ours: np.ndarray, truth: np.ndarray, r: int) -> float:
    """Compare our r values with the dense SVD's; return the max relative error on σᵢ ≥ 1e-3·σ₁."""
    assert ours.shape == (r,)
    assert np.all(np.diff(ours) <= 1e-12 * max(ours[0], 1e-300))  # descending
    k = min(r, truth.size)
    s1 = truth[0]
    if s1 == 0:
        assert np.all(ours == 0)
        return 0.0
    big = truth[:k] >= 1e-3 * s1
    rel = np.abs(ours[:k][big] - truth[:k][big]) / truth[:k][big]
    assert rel.max() <= REL, rel.max()
    # below the threshold: absolute error within the Gram route's floor (measured ≤ 2.1e-7·σ₁)
    assert np.all(np.abs(ours[:k][~big] - truth[:k][~big]) <= 1e-6 * s1)
    assert np.all(ours[k:] <= 1e-6 * s1)  # r > min(m, n): the extra values are zero (to the floor)
    return float(rel.max())


@settings(max_examples=150, deadline=None)
@given(
    out=st.integers(1, 70),
    inn=st.integers(1, 70),
    r=st.integers(1, 20),
    dtype=st.sampled_from(["fp64", "fp32", "fp16", "bf16"]),
    scale=st.sampled_from([1.0, 2.0, 0.125, -0.5, 1e-3, 37.0]),
    decay=st.sampled_from([None, 0.9, 0.5, 0.2]),
    seed=st.integers(0, 2**31),
)
def test_singular_values_match_dense_svd(out, inn, r, dtype, scale, decay, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((r, inn))
    b = rng.standard_normal((out, r)) * (decay ** np.arange(r) if decay else 1.0)
    a, b = quantize(a, dtype), quantize(b, dtype)  # the exact values a reader would hand over
    store = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16, "bf16": np.float32}[dtype]
    ours = lora_singular_values(a.astype(store), b.astype(store), scale)
    assert ours.dtype == np.float64
    assert_sigma_close(ours, dense_sigma(a, b, scale), r)


@pytest.mark.parametrize("shape", [(4096, 64, 64), (300, 2000, 32), (1, 500, 8), (500, 1, 8)])
def test_large_and_degenerate_shapes(shape):
    out, inn, r = shape
    rng = np.random.default_rng(7)
    a = rng.standard_normal((r, inn)).astype(np.float32)
    b = (rng.standard_normal((out, r)) * 0.8 ** np.arange(r)).astype(np.float32)
    assert_sigma_close(lora_singular_values(a, b, 0.5), dense_sigma(a, b, 0.5), r)


def test_ill_conditioned_factors():
    """A's rows nearly dependent while B compensates: ΔW is well-conditioned but G_A is not."""
    rng = np.random.default_rng(3)
    r, n, m = 16, 200, 150
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))  # (n, r)
    col = np.logspace(0, -4, r)
    a = (q * col).T  # (r, n) singular values 1 .. 1e-4
    b = rng.standard_normal((m, r)) / col * np.logspace(0, -2, r)  # undoes the decay partly
    assert_sigma_close(lora_singular_values(a, b), dense_sigma(a, b, 1.0), r)


def test_known_spectrum_exact():
    rng = np.random.default_rng(0)
    s = np.array([10.0, 5.0, 5.0, 1.0, 1e-2, 0.0])
    u, _ = np.linalg.qr(rng.standard_normal((40, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    b, a = u * s, v.T  # B (40, 6), A (6, 30)
    ours = lora_singular_values(a, b, 2.0)
    np.testing.assert_allclose(ours[:5], 2 * s[:5], rtol=1e-9)  # Gram route: ~ε·(σ₁/σᵢ)²
    assert ours[5] <= 1e-7 * ours[0]


def test_zero_layer_is_exactly_zero():
    a = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    sigma = lora_singular_values(a, np.zeros((16, 8), np.float32), 2.0)
    assert sigma.shape == (8,) and np.all(sigma == 0.0) and np.all(np.isfinite(sigma))


@pytest.mark.parametrize("which", ["down", "up"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_factor_is_detected(which, bad):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 10)), rng.standard_normal((12, 4))
    (a if which == "down" else b)[2, 3] = bad
    with pytest.raises(NonFiniteError) as e:
        lora_singular_values(a.astype(np.float16), b.astype(np.float16))
    assert e.value.which == which


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 50), inn=st.integers(1, 50), r=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_lora_svd_reconstructs(out, inn, r, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((r, inn)), rng.standard_normal((out, r))
    scale = -0.75 if seed % 2 else 1.5
    dense = scale * b @ a
    svd = lora_svd(a, b, scale)
    k = svd.s.size
    np.testing.assert_allclose(svd.u @ np.diag(svd.s) @ svd.vt, dense, atol=1e-10 * max(1.0, svd.s[0]))
    np.testing.assert_allclose(svd.u.T @ svd.u, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(svd.vt @ svd.vt.T, np.eye(k), atol=1e-10)
    truth = np.linalg.svd(dense, compute_uv=False)
    kk = min(k, truth.size)
    np.testing.assert_allclose(svd.s[:kk], truth[:kk], atol=1e-10 * max(1.0, truth[0]))
    for split in ("up", "sqrt"):
        down, up = svd.factors(split)
        assert down.shape == (k, inn) and up.shape == (out, k)
        np.testing.assert_allclose(up @ down, dense, atol=1e-10 * max(1.0, svd.s[0]))


def test_truncation_is_eckart_young_optimal():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((10, 40)), rng.standard_normal((30, 10)) * 0.7 ** np.arange(10)
    svd = lora_svd(a, b, 1.0)
    dense = b @ a
    for k in (1, 3, 7):
        t = svd.truncate(k)
        err = np.linalg.norm(dense - t.u @ np.diag(t.s) @ t.vt)
        np.testing.assert_allclose(err, np.sqrt(np.sum(svd.s[k:] ** 2)), rtol=1e-9)
    with pytest.raises(ValueError, match="unknown split"):
        svd.factors("left")


def test_stacked_svd_is_svd_of_sum():
    rng = np.random.default_rng(9)
    pairs = [
        (rng.standard_normal((r, 25)), rng.standard_normal((18, r)), s) for r, s in ((4, 0.5), (6, -2.0))
    ]
    dense = sum(s * b @ a for a, b, s in pairs)
    svd = stacked_svd(pairs)
    np.testing.assert_allclose(svd.u @ np.diag(svd.s) @ svd.vt, dense, atol=1e-10)
    np.testing.assert_allclose(svd.s[:10], np.linalg.svd(dense, compute_uv=False)[:10], rtol=1e-9, atol=1e-12)


def truncated(dense: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.mark.parametrize("route", ["gram", "cholqr2", "householder"])
@pytest.mark.parametrize("cond", [1.0, 1e3, 1e9])  # 1e9 and rank deficiency force the Householder route
def test_truncated_svd_matches_dense_for_any_conditioning(rng, monkeypatch, cond, route):
    if route != "gram":
        monkeypatch.setattr(spectral.Core, "truncate", lambda *args: None)
    if route == "householder":
        monkeypatch.setattr(spectral, "_cholqr2_t", lambda x: None)
    truncated_svd = spectral.truncated_svd

    a = rng.standard_normal((6, 30)) * np.logspace(0, -np.log10(cond), 6)[:, None]  # (r, in)
    b = rng.standard_normal((20, 6))  # (out, r)
    if cond == 1e9:
        b[:, 5] = 0.0  # rank-deficient up factor
    dense = -1.5 * b @ a
    for k in (1, 3, 6):
        t = truncated_svd(a, b, -1.5, k)
        got = (t.u * t.s) @ t.vt
        assert np.linalg.norm(got - truncated(dense, k)) <= 1e-10 * np.linalg.norm(dense)


@pytest.mark.parametrize("split", ["up", "sqrt"])
@pytest.mark.parametrize("scale", [2.0, -0.5])
@pytest.mark.parametrize("route", ["core", "qr"])
def test_truncated_factors_place_s_and_divide(rng, monkeypatch, split, scale, route):
    if route == "qr":
        monkeypatch.setattr(spectral.Core, "factors", lambda *args: None)
    a = rng.standard_normal((6, 30)) * 0.7 ** np.arange(6)[:, None]  # (r, in)
    b = rng.standard_normal((20, 6))  # (out, r)
    dense = scale * b @ a
    for k in (1, 4):
        down, up = spectral.truncated_factors(a, b, scale, k, split, divide=scale)
        assert down.shape == (k, 30) and up.shape == (20, k)
        np.testing.assert_allclose(scale * up @ down, truncated(dense, k), atol=1e-10 * np.abs(dense).max())
        norms = np.linalg.norm(down, axis=1)
        if split == "up":  # S in up: down has orthonormal rows
            np.testing.assert_allclose(norms, 1.0, rtol=1e-10)
        else:  # √S on each side: row norms of down = √σ
            np.testing.assert_allclose(norms**2, np.linalg.svd(dense, compute_uv=False)[:k], rtol=1e-9)
    with pytest.raises(ValueError, match="unknown split"):
        spectral.truncated_factors(a, b, scale, 2, "left")


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(-1200, 1200))
def test_times_pow2_equals_ldexp_bit_for_bit(seed, e):
    """The product with an exact power of two rounds as np.ldexp does: normal, subnormal and
    overflowing results, zeros of both signs and infinities (which the rescaled cores rely on)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(64) * 2.0 ** rng.integers(-1070, 1020, 64)
    x[:4] = [0.0, -0.0, np.inf, 5e-324]
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        got, want = spectral.times_pow2(x, e), np.ldexp(x, e)
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
