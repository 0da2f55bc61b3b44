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


def lora_singular_values(down: np.ndarray, up: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Singular values of scale·up@down, descending, float64, length r (zeros included)."""
    a = np.asarray(down)  # (r, n)
    b = np.asarray(up)  # (m, r)
    ga, gb = factor_grams(a, b)  # (r, r), (r, r)
    if not np.isfinite(np.trace(ga)):
        raise NonFiniteError("down")
    if not np.isfinite(np.trace(gb)):
        raise NonFiniteError("up")
    return gram_singular_values(ga, gb, scale)


def factor_grams(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A Aᵀ, BᵀB) in float64 for A (r, n), B (m, r).  Large factors: the second half of A's
    columns and of B's rows go to a helper thread (numpy releases the GIL in copies and BLAS)."""
    n, m = a.shape[1], b.shape[0]
    if a.size + b.size < _PARALLEL_MIN or (os.cpu_count() or 1) < 2:
        return _grams(a, b, (0, n), (0, m))
    ha, hb = n // 2, m // 2
    helper = _helper().submit(_grams, a, b, (ha, n), (hb, m))
    ga, gb = _grams(a, b, (0, ha), (0, hb))
    ga2, gb2 = helper.result()
    return ga + ga2, gb + gb2


def _grams(a, b, cols: tuple[int, int], rows: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    with _one_blas_thread():
        return _gram_rows(a, *cols), _gram_cols(b, *rows)


def _gram_rows(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Σ_j x[:, j] x[:, j]ᵀ over lo ≤ j < hi, float64, for x (r, n): blocks (r, w) widened in cache."""
    r = x.shape[0]
    if x.dtype == np.float64:
        part = x[:, lo:hi]  # (r, hi-lo) strided view, BLAS reads it in place
        return part @ part.T  # (r, r)  syrk
    g = np.zeros((r, r))  # (r, r)
    buf = np.empty(r * min(max(hi - lo, 0), _BLOCK))  # flat: every block view is C-contiguous
    for j in range(lo, hi, _BLOCK):
        w = min(_BLOCK, hi - j)
        blk = buf[: r * w].reshape(r, w)  # (r, w) float64
        np.copyto(blk, x[:, j : j + w])
        g += blk @ blk.T  # (r, r)  syrk
    return g


def _gram_cols(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Σ_i x[i]ᵀ x[i] over lo ≤ i < hi, float64, for x (m, r): blocks (h, r) widened in cache."""
    r = x.shape[1]
    if x.dtype == np.float64:
        part = x[lo:hi]  # (hi-lo, r)
        return part.T @ part  # (r, r)  syrk
    g = np.zeros((r, r))  # (r, r)
    buf = np.empty(r * min(max(hi - lo, 0), _BLOCK))
    for i in range(lo, hi, _BLOCK):
        h = min(_BLOCK, hi - i)
        blk = buf[: h * r].reshape(h, r)  # (h, r) float64
        np.copyto(blk, x[i : i + h])
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
def _one_blas_thread() -> Iterator[None]:
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
    with _one_blas_thread():  # r×r LAPACK: a second BLAS thread only adds waiting under load
        lam, u = np.linalg.eigh(ga)  # (r,), (r, r)
        root = np.sqrt(np.clip(lam, 0.0, None))  # (r,)
        h = root[:, None] * (u.T @ gb @ u) * root[None, :]  # (r, r)
        s2 = np.linalg.eigvalsh(0.5 * (h + h.T))  # ascending
    return np.sqrt(np.clip(s2[::-1], 0.0, None)) * abs(scale)


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
