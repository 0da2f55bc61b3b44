"""The dense maths of extract and verify-merge: a truncated SVD of a dense ΔW, and exact Frobenius
distances between a dense matrix D and a factored one s·B·A without forming B·A.

    ⟨D, B A⟩ = tr(Bᵀ D Aᵀ) = Σ (BᵀD) ∘ A         one (k, m)·(m, n) product
    ‖B A‖²   = tr(G_B G_A) = Σ (BᵀB) ∘ (A Aᵀ)    two k×k Grams
    ‖D − s B A‖² = ‖D‖² − 2s⟨D, B A⟩ + s²‖B A‖²

All sums are float64 (float32 accumulation over 45 M entries of a 7B layer loses ~4 digits, which
the cancellation in the last line would turn into a visible error).  The truncated SVD is exact
(LAPACK gesdd) unless the rank is fixed and small against the layer: then a randomized range finder
with two power iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4) whose result is the exact
projection of ΔW on a k-dimensional subspace, so its loss ‖ΔW‖² − Σσᵢ² is exact for what is stored
(`distance` re-measures it from the stored factors anyway).
"""

from __future__ import annotations

import math

import numpy as np

RANDOMIZED_BELOW = 0.25  # fixed rank k < this × min(m, n): randomized range finder, else exact SVD
OVERSAMPLE = 10
POWER_ITERATIONS = 2


def sq_norm(x: np.ndarray) -> float:
    """‖x‖²_F accumulated in float64, in row blocks (no float64 copy of the whole matrix)."""
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    step = max(1, (1 << 21) // max(flat.shape[1], 1))
    total = 0.0
    for i in range(0, flat.shape[0], step):
        block = flat[i : i + step].astype(np.float64)  # (≤ step, n)
        total += float(np.einsum("ij,ij->", block, block))
    return total


def inner(d: np.ndarray, up: np.ndarray, down: np.ndarray) -> float:
    """⟨D, up·down⟩ for D (m, n), up (m, k), down (k, n), in float64."""
    left = up.T.astype(np.float64) @ d.astype(np.float64, copy=False)  # (k, n)
    return float(np.einsum("ij,ij->", left, down.astype(np.float64)))


def factored_sq_norm(up: np.ndarray, down: np.ndarray) -> float:
    """‖up·down‖²_F from the two k×k Grams."""
    gu = up.T.astype(np.float64) @ up.astype(np.float64)  # (k, k)
    gd = down.astype(np.float64) @ down.T.astype(np.float64)  # (k, k)
    return float(np.einsum("ij,ij->", gu, gd))


def distance(d_sq: float, dot: float, f_sq: float, scale: float = 1.0) -> float:
    """‖D − s·F‖ from ‖D‖², ⟨D, F⟩ and ‖F‖² (clipped at 0 where rounding makes it negative)."""
    return math.sqrt(max(d_sq - 2.0 * scale * dot + scale * scale * f_sq, 0.0))


def exact_svd(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U (m, p), σ (p,), Vᵀ (p, n)), p = min(m, n), in d's precision."""
    return np.linalg.svd(d, full_matrices=False)


def randomized_svd(d: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (U (m, k), σ (k,), Vᵀ (k, n)) of d from a (k + OVERSAMPLE)-column range finder."""
    m, n = d.shape
    width = min(k + OVERSAMPLE, m, n)
    omega = np.random.default_rng(seed).standard_normal((n, width)).astype(d.dtype)  # (n, l)
    q, _ = np.linalg.qr(d @ omega)  # (m, l)
    for _ in range(POWER_ITERATIONS):  # re-orthonormalised each time: no loss of the small directions
        z, _ = np.linalg.qr(d.T @ q)  # (n, l)
        q, _ = np.linalg.qr(d @ z)  # (m, l)
    ub, s, vt = np.linalg.svd(q.T @ d, full_matrices=False)  # (l, l), (l,), (l, n)
    return q @ ub[:, :k], s[:k], vt[:k]


def use_randomized(shape: tuple[int, int], k: int | None) -> bool:
    return k is not None and k < RANDOMIZED_BELOW * min(shape)
