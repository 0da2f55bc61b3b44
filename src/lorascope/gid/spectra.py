"""Gradient intrinsic dimensionality (GID): metrics of one layer's accumulated full-weight gradient.

G is the sum over a calibration pass of ∂L/∂W (out, in).  With σ₁ ≥ σ₂ ≥ … its singular values:

  gid            erank(G) = exp(−Σ pᵢ ln pᵢ), pᵢ = σᵢ/Σσⱼ (Roy & Vetterli 2007, on σ, the definition the
                 RaLoRA paper uses); σᵢ ≤ 1e-6·σ₁ are left out as numerical zeros (`metrics.effective_rank`)
  gid_energy     the same entropy with pᵢ = σᵢ²/Σσⱼ² (the σ²-normalised variant some tools report;
                 always ≤ gid for the same spectrum)
  numerical_rank #{σᵢ > 1e-6·σ₁}: the threshold count
  stable_rank    Σσᵢ²/σ₁²
  energy_rank_90 min k with Σ_{i≤k} σᵢ² ≥ 0.9·Σσᵢ²
  importance     mean |W ⊙ G| (RaLoRA-Pro's layer importance; needs the weight)

`gradient_singular_values` is the exact float64 route used on CPU arrays: the eigenvalues of the
Gram matrix of the smaller side (min(out, in)² memory), or a full SVD when the matrix is small
(both sides ≤ `SVD_BELOW`), where it costs less than forming the Gram.  The Gram squares the
condition number, so σᵢ below ~1e-7·σ₁ carry relative errors of order 1e-16·(σ₁/σᵢ)²; they are
beneath the numerical-zero cut and change erank by far less than its reported precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import NUMERICAL_RTOL, Spectrum, effective_rank, energy_rank, numerical_rank, stable_rank

SVD_BELOW = 64


def gradient_singular_values(g: np.ndarray) -> np.ndarray:
    """Singular values of G (out, in) in float64, descending."""
    g = np.asarray(g, dtype=np.float64)
    if max(g.shape) <= SVD_BELOW:
        return np.linalg.svd(g, compute_uv=False)
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g  # (k, k), k = min(out, in)
    ev = np.linalg.eigvalsh(gram)[::-1]  # (k,) descending
    return np.sqrt(np.clip(ev, 0.0, None))


def energy_erank(sigma: np.ndarray) -> float:
    """exp(H(p)) with p = σ²/Σσ² over the numerically non-zero σ (0 for an all-zero spectrum)."""
    if sigma.size == 0 or not sigma[0] > 0:
        return 0.0
    pos = sigma[sigma > NUMERICAL_RTOL * sigma[0]] ** 2
    p = pos / pos.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


@dataclass(frozen=True)
class GidMetrics:
    """The per-layer GID fields of gid.json that depend on G's spectrum alone (module docstring)."""

    gid: float
    gid_energy: float
    numerical_rank: int
    stable_rank: float
    energy_rank_90: int
    grad_norm: float


def gid_metrics(sigma: np.ndarray) -> GidMetrics:
    """The GID metrics of G from its singular values (descending, float64)."""
    s = Spectrum(np.asarray(sigma, dtype=np.float64), int(np.size(sigma)))
    return GidMetrics(
        gid=effective_rank(s),
        gid_energy=energy_erank(s.sigma),
        numerical_rank=numerical_rank(s),
        stable_rank=stable_rank(s),
        energy_rank_90=energy_rank(s, 0.9),
        grad_norm=float(np.sqrt(s.energy)),
    )


def importance(weight: np.ndarray, grad: np.ndarray) -> float:
    """mean |W ⊙ G|, accumulated in float64."""
    return float(np.mean(np.abs(np.asarray(weight, dtype=np.float64) * np.asarray(grad, dtype=np.float64))))
