"""Truncated SVD of a *dense* merged ΔW (out, in), for the merge methods that work on ΔW itself
(TIES, DARE, magnitude pruning): the merged matrix is full-rank, so it is re-factorised to LoRA
factors here.  Low-rank updates given as factors never come here: spectral.py handles them
exactly from the r×r core.

Only the top k triplets are written, so only they are computed: by scipy's ARPACK when scipy is
installed (Lanczos: converges with the square root of the gap, ~10× fewer products than the
iteration below on a TIES merge), else by block subspace iteration (Halko,
Martinsson & Tropp 2011, Alg. 4.4: a seeded Gaussian start of l = k + max(10, k) columns,
re-orthonormalised after every product); either way the top k triplets must be *converged*: the
residual R = A·Vₖ − UₖΣₖ (the other residual, Aᵀu − σv, is zero by construction) satisfies
‖R‖_F ≤ `_TOL`·gap, gap = σ̃ₖ − σ̃ₖ₊₁ (Ritz values converge twice as fast as vectors, so σ̃ₖ₊₁
is close to σₖ₊₁ long before its vector is; the vectors of the flat tail after k are never
needed).  By Wedin's theorem the kept subspaces are then within ‖R‖/gap of the exact ones, so
the rank-k product differs from the exact truncation by about 2·`_TOL` relative: far inside 1e-6.
When the spectrum gives no such gap within `_MAX_ITERS` iterations (σₖ = σₖ₊₁: the exact
truncation itself is then ill-defined), or the block would not be much smaller than the matrix
(min(m, n) < 8·l), the exact LAPACK SVD runs instead.  The loss of the truncation needs no tail:
‖M − Mₖ‖²_F = ‖M‖²_F − Σᵢ≤ₖ σᵢ² (what merge's post-merge check measures).

Cost for a 896×896 TIES merge at k = 12 on this 2-core machine: a few matrix products of 896×24
blocks instead of a full 896×896 SVD (benchmarks/bench_merge_dense.py gives the numbers).
"""

from __future__ import annotations

import numpy as np

from ..parallel import blas_threads
from ..spectral import LowRankSVD, energy_k

_TOL = 1e-9  # ‖R‖_F ≤ this·(σ̃ₖ − σ̃ₖ₊₁): the kept subspaces within 1e-9 of the exact ones
_MAX_ITERS = 40  # subspace iterations before the exact SVD is used instead
_ZERO = 1e-13  # σ̃ᵢ ≤ this·σ̃₁ counts as a zero direction (its vectors do not change the product)
_BLOCKS = 8  # the iteration runs when min(m, n) ≥ this × l (measured: 896×896 at l = 24 is ~7× faster
# than LAPACK's SVD on one thread, 128×896 is not faster)
_ENERGY_START = 32  # first rank tried in energy mode; doubled until the energy is captured


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def top_k(a: np.ndarray, k: int, seed: int = 0) -> LowRankSVD | None:
    """The top-k singular triplets of a (m, n) float64, checked converged (module docstring), or
    None when they do not converge or the block is too large to gain anything: scipy's ARPACK
    (implicitly restarted Lanczos, seeded start vector) where scipy is installed, else block
    subspace iteration."""
    m, n = a.shape
    width = k + max(10, k)  # l: oversampled block
    if _BLOCKS * width > min(m, n):  # the exact SVD costs about as much here
        return None
    lanczos = _arpack(a, k, seed)
    return lanczos if lanczos is not None else _subspace(a, k, width, seed)


def _arpack(a: np.ndarray, k: int, seed: int) -> LowRankSVD | None:
    """ARPACK's top k + 1 triplets (tol 0: to working precision; the (k+1)th gives the gap), kept
    when `_converged` confirms them; None without scipy or when ARPACK does not converge."""
    try:
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, svds
    except ImportError:
        return None

    v0 = np.random.default_rng(seed).standard_normal(min(a.shape))  # (min(m, n),)
    # one BLAS thread, scipy's own OpenBLAS included (loaded after the thread policy looked): Lanczos
    # is a sequence of matrix-vector products and (k+1)-sized solves; more threads only busy-wait
    with blas_threads(1):
        try:
            u, s, vt = svds(a, k=k + 1, tol=0, v0=v0, solver="arpack")  # ascending σ
        except (ArpackNoConvergence, ArpackError):
            return None
    order = np.argsort(s)[::-1]  # descending
    u, s, vt = u[:, order], s[order], vt[order]  # (m, k+1), (k+1,), (k+1, n)
    if not _converged(a, u[:, :k], s, vt[:k], k):
        return None
    return LowRankSVD(u[:, :k], s[:k], vt[:k])


def _subspace(a: np.ndarray, k: int, width: int, seed: int) -> LowRankSVD | None:
    """Block subspace iteration until `_converged` (module docstring), or None."""
    n = a.shape[1]
    q, _ = np.linalg.qr(a @ np.random.default_rng(seed).standard_normal((n, width)))  # (m, l)
    for it in range(_MAX_ITERS):
        w, _ = np.linalg.qr(a.T @ q)  # (n, l)
        q, _ = np.linalg.qr(a @ w)  # (m, l) orthonormal basis of the dominant range
        if it < 1:
            continue
        ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)  # (l, l), (l,), (l, n)
        if _converged(a, q @ ub[:, :k], s[: k + 1], vt[:k], k):
            return LowRankSVD(q @ ub[:, :k], s[:k], vt[:k])  # (m, k), (k,), (k, n)
    return None


def _converged(a: np.ndarray, u: np.ndarray, s: np.ndarray, vt: np.ndarray, k: int) -> bool:
    """‖A·vᵢ − σᵢuᵢ‖ over the k leading Ritz triplets (u (m, k), vt (k, n); s holds k + 1 values)
    against the gap after the kth (or after the last non-zero one, when the kth and beyond are
    zero: their vectors multiply nothing)."""
    if not s[0] > 0:
        return False  # a zero matrix: the exact route returns its zero SVD
    residual = float(np.linalg.norm(a @ vt.T - u * s[:k]))  # (m, k) → Frobenius
    live = int(np.count_nonzero(s[:k] > _ZERO * s[0]))
    gap = s[k - 1] - s[k] if live == k else s[live - 1]
    return residual <= _TOL * gap


def _exact(a: np.ndarray) -> LowRankSVD:
    u, s, vt = np.linalg.svd(a, full_matrices=False)  # (r, p), (p,), (p, c)
    return LowRankSVD(u, s, vt)


def dense_truncated_svd(
    m: np.ndarray,
    rank: int | None = None,
    energy: float | None = None,
    *,
    seed: int = 0,
) -> LowRankSVD:
    """Truncated SVD of a dense matrix m (r, c), float64: k = `rank` (clipped to p = min(r, c)), or
    the smallest k ≥ 1 whose σ₁²+…+σ_k² ≥ `energy`·‖m‖²_F; both given: the smaller k; neither: k = p.

    The top k by converged subspace iteration (`top_k`, seeded: deterministic), else the exact
    LAPACK SVD; both agree to ~1e-9 relative (module docstring).  Energy mode: ‖m‖²_F is exact,
    k is read off the converged σ (starting at 32 directions, doubling while the energy is not
    reached), else off the exact SVD.  A zero matrix gives s = 0.
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
        fast = top_k(a, cap, seed) if cap < p else None
        return (fast or _exact(a)).truncate(cap)
    total = float(np.vdot(a, a))  # ‖m‖²_F: the exact denominator on both routes
    guess = min(_ENERGY_START, cap)
    while guess < p:
        sketch = top_k(a, guess, seed)
        if sketch is None:
            break
        k = max(1, energy_k(sketch.s, energy, total))  # len + 1 when the energy is not reached
        if k <= guess:
            return sketch.truncate(min(k, cap))
        if guess >= cap:  # the rank cap binds before the energy is reached
            return sketch.truncate(cap)
        guess = min(2 * guess, cap)
    full = _exact(a)
    k = max(1, energy_k(full.s, energy))  # a zero matrix keeps one zero direction
    return full.truncate(min(k, cap))
