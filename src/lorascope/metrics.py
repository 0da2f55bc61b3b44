"""Per-layer spectral metrics: pure functions of one layer's singular values.

Hand-written where numpy has it: `median` / `percentile` below, because numpy's import numpy.ma on
first use (27-44 ms measured, of an audit's ~0.5 s); `tests/test_metrics.py` checks them against
numpy bit for bit and `tests/test_layout.py` keeps numpy.ma out of an audit run.

Definitions (σ₁ ≥ σ₂ ≥ … ≥ 0 are the singular values of the *scaled* update ΔW = scale·B·A, r is
the allocated rank):

  sigma_max        σ₁ = ‖ΔW‖₂
  frobenius        ‖ΔW‖_F = √Σσᵢ²
  stable_rank      ‖ΔW‖_F² / σ₁²                    (scale-invariant, 1 ≤ · ≤ rank)
  energy_rank@τ    min k with Σ_{i≤k} σᵢ² ≥ τ·Σσᵢ²  (τ = 0.90 by default; exact, no off-by-one)
  effective_rank   exp(H(p)), p = σ/Σσ (Roy & Vetterli 2007, on σ not σ²), over σᵢ > rtol·σ₁
                   (the numerically non-zero part, the same cut as numerical_rank; see below)
  utilisation      stable_rank / r
  numerical_rank   #{σᵢ > rtol·σ₁}, rtol = 1e-6 (well above the 1e-8·σ₁ noise floor of the Gram core)

A *dead* layer (all σ = 0, e.g. an untrained adapter whose B is still zero) gets 0 for every rank
metric and `dead = True`: never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .spectral import energy_k

NUMERICAL_RTOL = 1e-6


@dataclass(frozen=True)
class Spectrum:
    sigma: np.ndarray  # (r,) descending, float64, of the scaled ΔW
    rank: int  # allocated rank

    @property
    def energy(self) -> float:
        return float(np.sum(self.sigma**2))

    @property
    def relative_energy(self) -> float:
        """Σ(σᵢ/σ₁)² = ‖ΔW‖_F²/σ₁², finite for any finite σ (σ₁² itself may exceed float64)."""
        return 0.0 if self.dead else float(np.sum((self.sigma / self.sigma[0]) ** 2))

    @property
    def dead(self) -> bool:
        return self.sigma.size == 0 or not self.sigma[0] > 0.0


def sigma_max(s: Spectrum) -> float:
    return float(s.sigma[0]) if s.sigma.size else 0.0


def frobenius(s: Spectrum) -> float:
    return float(s.sigma[0] * np.sqrt(s.relative_energy)) if not s.dead else 0.0


def stable_rank(s: Spectrum) -> float:
    if s.dead:
        return 0.0
    return s.relative_energy


def effective_rank(s: Spectrum) -> float:
    if s.dead:
        return 0.0
    # Only σᵢ > rtol·σ₁ count.  The Gram core returns exact zeros of a rank-deficient update as
    # ~1e-8·σ₁ noise, and each such value adds ≈ p·ln(1/p) to H: 63 of them (a rank-1 update
    # stored at r = 64) moved exp(H) by 4e-6 relative.  Dropping true values below 1e-6·σ₁
    # changes exp(H) by at most r·1.5e-5 relative, and trained adapters have none there.
    pos = s.sigma[s.sigma > NUMERICAL_RTOL * s.sigma[0]] / s.sigma[0]  # in (rtol, 1]: no overflow
    p = pos / pos.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def energy_rank(s: Spectrum, tau: float = 0.90) -> int:
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"energy threshold must be in (0, 1], got {tau}")
    return energy_k(s.sigma, tau)


def utilisation(s: Spectrum) -> float:
    return stable_rank(s) / s.rank if s.rank else 0.0


def numerical_rank(s: Spectrum, rtol: float = NUMERICAL_RTOL) -> int:
    if s.dead:
        return 0
    return int(np.count_nonzero(s.sigma > rtol * s.sigma[0]))


MetricFn = Callable[[Spectrum], float]

# The scalar metrics every layer report carries, in output order.  energy_rank is parametrised by
# τ and added per threshold by the audit ("energy_rank@0.9").
METRICS: dict[str, MetricFn] = {
    "sigma_max": sigma_max,
    "frobenius": frobenius,
    "stable_rank": stable_rank,
    "effective_rank": effective_rank,
    "utilisation": utilisation,
    "numerical_rank": numerical_rank,
}


def energy_key(tau: float) -> str:
    # 12 significant digits: ":g" (6 digits) would name 0.9999999 and 1.0 both "energy_rank@1"
    return f"energy_rank@{tau:.12g}"


def compute(s: Spectrum, thresholds: tuple[float, ...] = (0.90,)) -> dict[str, float]:
    """Every metric of METRICS plus energy_rank at each threshold."""
    out: dict[str, float] = {name: fn(s) for name, fn in METRICS.items()}
    for tau in thresholds:
        out[energy_key(tau)] = energy_rank(s, tau)
    return out


# --- sample statistics ----------------------------------------------------------------------------
# numpy's median / percentile import numpy.ma on first use (≈ 20 ms of a command's start-up); these
# give the same numbers, bit for bit, for the 1-D samples the audit and study summaries take (NaN
# anywhere gives NaN, as numpy's do).


def _sorted_sample(values, what: str) -> np.ndarray:
    a = np.sort(np.asarray(values, dtype=np.float64).ravel())  # (n,)
    if a.size == 0:
        raise ValueError(f"{what} of an empty sample")
    return a


def percentile(values, q: float) -> float:
    """numpy.percentile(values, q) with the default linear method, for a non-empty 1-D sample."""
    a = _sorted_sample(values, "percentile")  # (n,)
    if np.isnan(a[-1]):  # sorting puts NaN last
        return math.nan
    at = (a.size - 1) * (q / 100)
    lo = int(at // 1)
    hi = min(lo + 1, a.size - 1)
    t, x, y = at - lo, float(a[lo]), float(a[hi])
    d = y - x
    return y - d * (1 - t) if t >= 0.5 else x + d * t  # numpy's two-sided interpolation


def median(values) -> float:
    """numpy.median(values) for a non-empty 1-D sample: the middle value, or the mean of the two."""
    a = _sorted_sample(values, "median")  # (n,)
    if np.isnan(a[-1]):
        return math.nan
    mid = a.size // 2
    return float(a[mid]) if a.size % 2 else (float(a[mid - 1]) + float(a[mid])) / 2
