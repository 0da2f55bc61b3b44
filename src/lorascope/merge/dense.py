"""Truncated SVD of a *dense* merged ΔW (out, in), for the merge methods that work on ΔW itself
(TIES, DARE, magnitude pruning): the merged matrix is full-rank, so it is re-factorised to LoRA
factors here.  Exact LAPACK SVD for small matrices; for large ones with a small target, the
randomized range finder with power iterations (Halko, Martinsson & Tropp 2011).  Low-rank updates
given as factors never come here: spectral.py handles them exactly from the r×r core.
"""

from __future__ import annotations

import numpy as np

from ..spectral import LowRankSVD, energy_k


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# Subspace iterations of the randomized route (Halko, Martinsson & Tropp 2011, Alg. 4.4): q = 2
# makes the sketch error decay like (σ_{k+1}/σ_k)^5 instead of ^1, enough for merged LoRA spectra.
_POWER_ITERS = 2
_ENERGY_START = 32  # first sketch rank tried in energy mode; doubled until the energy is captured


def _randomized_svd(a: np.ndarray, width: int, seed: int) -> LowRankSVD:
    """Approximate top-`width` SVD of a (m, n) float64 from a seeded Gaussian sketch."""
    omega = np.random.default_rng(seed).standard_normal((a.shape[1], width))  # (n, l)
    q, _ = np.linalg.qr(a @ omega)  # (m, l) orthonormal basis of the range sample
    for _ in range(_POWER_ITERS):  # re-orthonormalise between products: no loss to rounding
        w, _ = np.linalg.qr(a.T @ q)  # (n, l)
        q, _ = np.linalg.qr(a @ w)  # (m, l)
    ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)  # (l, l), (l,), (l, n)
    return LowRankSVD(q @ ub, s, vt)  # (m, l), (l,), (l, n)


def dense_truncated_svd(
    m: np.ndarray,
    rank: int | None = None,
    energy: float | None = None,
    *,
    seed: int = 0,
    exact_max: int = 1024,
) -> LowRankSVD:
    """Truncated SVD of a dense matrix m (r, c), float64: k = `rank` (clipped to p = min(r, c)), or
    the smallest k ≥ 1 whose σ₁²+…+σ_k² ≥ `energy`·‖m‖²_F; both given: the smaller k; neither: k = p.

    Exact LAPACK SVD when p ≤ exact_max or k ≥ p//4.  Otherwise the randomized range finder with
    q = 2 power iterations (Halko et al. 2011, Alg. 4.4) on l = k + max(10, k) columns of a Gaussian
    test matrix drawn from default_rng(seed): deterministic for a given seed.  Energy mode on that
    route: ‖m‖²_F is exact, and the sketch's σ̃ᵢ ≤ σᵢ (they are singular values of the projection
    QᵀM), so the k chosen from them never keeps less than `energy`; the sketch starts at k = 32 and
    doubles until it holds the energy, else the exact SVD is used.  A zero matrix gives s = 0.
    """
    a = _f64(m)  # (r, c)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {a.shape}")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    p = min(a.shape)
    cap = p if rank is None else min(rank, p)  # the largest k we may return
    if energy is None:
        if p > exact_max and cap < p // 4:
            return _randomized_svd(a, min(p, cap + max(10, cap)), seed).truncate(cap)
        u, s, vt = np.linalg.svd(a, full_matrices=False)  # (r, p), (p,), (p, c)
        return LowRankSVD(u, s, vt).truncate(cap)
    total = float(np.vdot(a, a))  # ‖m‖²_F: the exact denominator on both routes
    guess = _ENERGY_START
    while p > exact_max and min(guess, cap) < p // 4:
        sketch = _randomized_svd(a, min(p, guess + max(10, guess)), seed)
        # len + 1 when the sketch does not hold the energy; a zero matrix keeps one zero direction
        k = max(1, energy_k(sketch.s, energy, total))
        if k <= guess:  # found inside the well-resolved part of the sketch
            return sketch.truncate(min(k, cap))
        if guess >= cap:  # the rank cap binds before the energy is reached
            return sketch.truncate(cap)
        guess *= 2
    u, s, vt = np.linalg.svd(a, full_matrices=False)  # (r, p), (p,), (p, c)
    k = max(1, energy_k(s, energy))  # a zero matrix keeps one zero direction
    return LowRankSVD(u, s, vt).truncate(min(k, cap))
