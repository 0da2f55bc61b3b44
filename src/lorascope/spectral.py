"""Exact spectra of low-rank updates, computed from the factors only.

For ΔW = s · B A with A: (r, n) and B: (m, r) the dense m×n matrix is never formed.

* `lora_singular_values` (audit): Gram route, O((m+n)·r²) in float64.
      G_A = A Aᵀ = U Λ Uᵀ              (r, r)
      H   = Λ^½ Uᵀ (BᵀB) U Λ^½         (r, r)  has eigenvalues σᵢ(BA)²
  because σ(BA)² = eig(Aᵀ G_B A), whose non-zero part equals eig(G_B G_A) = eig(G_A^½ G_B G_A^½).  The Gram
  products are BLAS-3 `syrk`s: ~10× faster than a QR of the tall factor for r = 64.  Accuracy:
  absolute error of σᵢ² is O(ε₆₄·σ₁²), so σᵢ is exact to ~1e-15 relative for σᵢ ≳ 1e-4·σ₁ and
  to ~1e-8·σ₁ absolute below that; every metric we report is dominated by the large σᵢ.
* `lora_svd` (compress/merge): QR route, backward-stable, also returns singular vectors:
      Aᵀ = Q_a R_a, B = Q_b R_b, R_b R_aᵀ = U_c S V_cᵀ  →  BA = (Q_b U_c) S (Q_a V_c)ᵀ.

Non-finite factors are detected for free: a NaN/Inf anywhere in a row of A (column of B) makes a
diagonal entry of its Gram matrix non-finite.

Speed (benchmarks/README.md): factors stored in fp32/fp16/bf16 are widened to float64 one block of
`_BLOCK` columns (rows) at a time and the block Grams summed, so the widened copy stays in cache and
is never a whole (m, r) float64 array.  The Gram products run on one BLAS thread (OpenBLAS's
thread-local setting, when numpy's OpenBLAS has it): for r×r outputs the second thread gains ~25 %
on an idle machine but costs 5-50× when other processes load the cores (threads wait on each other).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

_BLOCK = 512  # columns (rows) widened to float64 at once: r=64 → a 256 KiB block, fits in L2
_PARALLEL_MIN = 1 << 18  # factor elements (A and B together) above which two threads pay off


class NonFiniteError(ValueError):
    """Raised with `which` = "down" or "up" when a factor holds NaN or Inf."""

    def __init__(self, which: str):
        self.which = which
        super().__init__(f"{which} factor contains NaN or Inf")


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def lora_singular_values(
    down: np.ndarray, up: np.ndarray, scale: float = 1.0, *, split: bool = True
) -> np.ndarray:
    """Singular values of scale·up@down, descending, float64, length r (zeros included).
    split=False: no helper thread (the caller already runs layers in parallel)."""
    a = np.asarray(down)  # (r, n)
    b = np.asarray(up)  # (m, r)
    ga, gb = factor_grams(a, b, split=split)  # (r, r), (r, r)
    if not np.isfinite(np.trace(ga)):
        raise NonFiniteError("down")
    if not np.isfinite(np.trace(gb)):
        raise NonFiniteError("up")
    return gram_singular_values(ga, gb, scale)


def factor_grams(a, b, *, split: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(A Aᵀ, BᵀB) in float64 for A (r, n), B (m, r).  Large factors: the second half of A's
    columns and of B's rows go to a helper thread (numpy releases the GIL in copies and BLAS).

    `a` and `b` may also be tuples (A₁, A₂, …) and (B₁, B₂, …): the Grams of the row-stacked
    [A₁; A₂; …] and the column-stacked [B₁ B₂ …] (merge-audit's cross Grams), computed block by
    block without ever forming the stacked arrays."""
    xa = a if isinstance(a, tuple) else (a,)
    xb = b if isinstance(b, tuple) else (b,)
    n, m = xa[0].shape[1], xb[0].shape[0]
    size = sum(x.size for x in xa) + sum(x.size for x in xb)
    if not split or size < _PARALLEL_MIN or (os.cpu_count() or 1) < 2:
        return _grams(xa, xb, (0, n), (0, m))
    ha, hb = n // 2, m // 2
    helper = _helper().submit(_grams, xa, xb, (ha, n), (hb, m))
    ga, gb = _grams(xa, xb, (0, ha), (0, hb))
    ga2, gb2 = helper.result()
    return ga + ga2, gb + gb2


def _grams(xa, xb, cols: tuple[int, int], rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    with one_blas_thread():
        return _gram_rows(xa, *cols), _gram_cols(xb, *rows)


def _gram_rows(xs: tuple[np.ndarray, ...], lo: int, hi: int) -> np.ndarray:
    """Σ_j x[:, j] x[:, j]ᵀ over lo ≤ j < hi, float64, for x = [x₁; x₂; …] (Σr, n): blocks (Σr, w)
    widened in cache."""
    r = sum(x.shape[0] for x in xs)
    if len(xs) == 1 and xs[0].dtype == np.float64:
        part = xs[0][:, lo:hi]  # (r, hi-lo) strided view, BLAS reads it in place
        return part @ part.T  # (r, r)  syrk
    g = np.zeros((r, r))  # (r, r)
    buf = np.empty(r * min(max(hi - lo, 0), _BLOCK))  # flat: every block view is C-contiguous
    for j in range(lo, hi, _BLOCK):
        w = min(_BLOCK, hi - j)
        blk = buf[: r * w].reshape(r, w)  # (r, w) float64
        top = 0
        for x in xs:
            np.copyto(blk[top : top + x.shape[0]], x[:, j : j + w])
            top += x.shape[0]
        g += blk @ blk.T  # (r, r)  syrk
    return g


def _gram_cols(xs: tuple[np.ndarray, ...], lo: int, hi: int) -> np.ndarray:
    """Σ_i x[i]ᵀ x[i] over lo ≤ i < hi, float64, for x = [x₁ x₂ …] (m, Σr): blocks (h, Σr) widened
    in cache."""
    r = sum(x.shape[1] for x in xs)
    if len(xs) == 1 and xs[0].dtype == np.float64:
        part = xs[0][lo:hi]  # (hi-lo, r)
        return part.T @ part  # (r, r)  syrk
    g = np.zeros((r, r))  # (r, r)
    buf = np.empty(r * min(max(hi - lo, 0), _BLOCK))
    for i in range(lo, hi, _BLOCK):
        h = min(_BLOCK, hi - i)
        blk = buf[: h * r].reshape(h, r)  # (h, r) float64
        left = 0
        for x in xs:
            np.copyto(blk[:, left : left + x.shape[1]], x[i : i + h])
            left += x.shape[1]
        g += blk.T @ blk  # (r, r)  syrk
    return g


@cache
def _helper():
    from concurrent.futures import ThreadPoolExecutor  # imported on first use: CLI start-up time

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorascope-gram")


# A forked child inherits the executor object but not its thread: start a fresh one there.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_helper.cache_clear)


@cache
def _openblas_local_threads():
    """numpy's bundled OpenBLAS `openblas_set_num_threads_local` (≥ 0.3.27), or None."""
    import ctypes

    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for lib in sorted(libs.glob("libscipy_openblas*.so*")):
        try:
            fn = ctypes.CDLL(str(lib)).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the enclosed BLAS calls of *this* Python thread on one BLAS thread (no-op elsewhere)."""
    fn = _openblas_local_threads()
    if fn is None:
        yield
        return
    previous = fn(1)
    try:
        yield
    finally:
        fn(previous)


def gram_singular_values(ga: np.ndarray, gb: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """σ(B A)·|scale| from G_A = A Aᵀ and G_B = BᵀB, both (r, r) symmetric PSD."""
    with one_blas_thread():  # r×r LAPACK: a second BLAS thread only adds waiting under load
        lam, u = np.linalg.eigh(ga)  # (r,), (r, r)
        root = np.sqrt(np.clip(lam, 0.0, None))  # (r,)
        h = root[:, None] * (u.T @ gb @ u) * root[None, :]  # (r, r)
        s2 = np.linalg.eigvalsh(0.5 * (h + h.T))  # ascending
    return np.sqrt(np.clip(s2[::-1], 0.0, None)) * abs(scale)


# Gram-route singular *vectors* are used only when every kept σ² and the gap after σ_k are large
# against σ₁²: the absolute error of σᵢ² is O(ε·σ₁²), so the top-k subspace (and ΔW_k) is then
# exact to ~ε/GRAM_MIN_RATIO ≈ 1e-10.  Otherwise callers take the QR route (lora_svd).
GRAM_MIN_RATIO = 1e-6


def gram_separated(s2: np.ndarray, k: int) -> bool:
    """True when the top-k of the descending eigenvalues s2 = σ² (from the Grams) may be trusted."""
    top = s2[0]
    nxt = s2[k] if k < s2.size else 0.0
    if not (np.isfinite(top) and top > 0 and s2[k - 1] >= GRAM_MIN_RATIO * top):
        return False
    return bool(s2[k - 1] - nxt >= GRAM_MIN_RATIO * top)


@dataclass(frozen=True)
class LowRankSVD:
    """Thin SVD of a low-rank update: ΔW = u @ diag(s) @ vt."""

    u: np.ndarray  # (m, k)
    s: np.ndarray  # (k,) descending
    vt: np.ndarray  # (k, n)

    def truncate(self, k: int) -> LowRankSVD:
        return LowRankSVD(self.u[:, :k], self.s[:k], self.vt[:k])

    def factors(self, split: str = "up") -> tuple[np.ndarray, np.ndarray]:
        """(down (k, n), up (m, k)) with ΔW = up @ down.

        split="up" puts S into up (kohya and PEFT conversion convention); "sqrt" splits √S/√S,
        which balances the factor norms (more fp16 headroom).
        """
        if split == "sqrt":
            root = np.sqrt(self.s)
            return root[:, None] * self.vt, self.u * root[None, :]
        if split == "up":
            return self.vt.copy(), self.u * self.s[None, :]
        raise ValueError(f"unknown split {split!r}; use 'up' or 'sqrt'")


def lora_svd(down: np.ndarray, up: np.ndarray, scale: float = 1.0) -> LowRankSVD:
    """Exact thin SVD of scale·up@down via QR of the factors (float64)."""
    a = _f64(down)  # (r, n)
    b = _f64(up)  # (m, r)
    qa, ra = np.linalg.qr(a.T)  # (n, r), (r, r)
    qb, rb = np.linalg.qr(b)  # (m, r), (r, r)
    # full_matrices=False: when r > m or r > n the core is not square; k = min(m, n, r)
    uc, s, vct = np.linalg.svd(rb @ ra.T, full_matrices=False)  # (r, k), (k,), (k, r)
    u = qb @ uc  # (m, k)
    vt = vct @ qa.T  # (k, n)
    if scale < 0:
        u = -u
    return LowRankSVD(u, s * abs(scale), vt)


def stacked_svd(pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> LowRankSVD:
    """Exact thin SVD of Σᵢ scaleᵢ·upᵢ@downᵢ by concatenating the scaled factors (rank Σ rᵢ)."""
    downs = np.concatenate([_f64(d) for d, _, _ in pairs], axis=0)  # (Σr, n)
    ups = np.concatenate([_f64(u) * s for _, u, s in pairs], axis=1)  # (m, Σr)
    return lora_svd(downs, ups, 1.0)


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


def _energy_k(s: np.ndarray, total: float, energy: float) -> int | None:
    """Smallest k ≥ 1 with σ₁²+…+σ_k² ≥ energy·total (1e-12 relative slack), None if s is too short."""
    cum = np.cumsum(s * s)  # (l,)
    i = int(np.searchsorted(cum, energy * total * (1.0 - 1e-12), side="left"))
    return i + 1 if i < cum.size else None


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
        k = _energy_k(sketch.s, total, energy)
        if k is not None and k <= guess:  # found inside the well-resolved part of the sketch
            return sketch.truncate(min(k, cap))
        if guess >= cap:  # the rank cap binds before the energy is reached
            return sketch.truncate(cap)
        guess *= 2
    u, s, vt = np.linalg.svd(a, full_matrices=False)  # (r, p), (p,), (p, c)
    k = _energy_k(s, float(np.sum(s * s)), energy) or p
    return LowRankSVD(u, s, vt).truncate(min(k, cap))
