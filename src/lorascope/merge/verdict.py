"""Per-layer verdicts and merge recommendations from `PairMetrics`.

Verdicts, checked in this order (the first that matches wins; the order is deliberate: Gradience
0.11 checks low overlap and redundancy before magnitude, so it calls a 10× gap "redundant" or
"safe"; here magnitude is checked before "redundant" and before "orthogonal"):

1. IMBALANCED when either update is zero in this layer (nothing to merge on one side).
2. CONFLICTING when the subspaces overlap (overlap_excess ≥ `overlap_low`), the updates project on
   each other's principal directions (interference ≥ `min_interference`) and disagree along them:
   agreement ≤ `agreement_conflict` or conflict_share ≥ `conflict_share`.
3. IMBALANCED when max/min of the Frobenius norms ≥ `imbalance`.
4. REDUNDANT when overlap_excess ≥ `overlap_high` and agreement ≥ `agreement_redundant`.
5. SAFE otherwise (low overlap, or moderate overlap that agrees).

Recommendations (all parameters bounded, all formulas here and in docs/merge.md):
* trim (TIES): 0.1 + 0.4·clip(overlap_excess, 0, 1) — grows with overlap from 0.1 to 0.5;
  density = 1 − trim.
* drop (DARE-TIES): 0.15 + 0.35·clip(conflict_share / `conflict_share`, 0, 1) — from 0.15 to 0.5.
* rebalancing (IMBALANCED): the stronger update's weight × clip(ρ^(−½), `min_weight`, 1) with
  ρ = imbalance, so a ρ gap becomes √ρ (bounded); the weaker keeps its weight.
* method: SAFE → linear (exact concatenation: nothing to resolve, and sparsifying methods make ΔW
  full-rank, so re-factorising them loses 10-30 % of it at Σ rᵢ); IMBALANCED → linear with
  rebalanced weights; CONFLICTING → dare_ties; REDUNDANT → svd of the average: two updates that
  say the same thing are averaged (weights × ½ each, as TIES' disjoint mean would for agreeing
  entries) rather than summed, which would double the step, and the average is written by exact
  SVD at the smallest rank k that keeps ‖avg − avg_k‖_F ≤ `redundant_loss`·‖avg‖_F (from the
  exact spectrum of the weighted sum, `merged_sigma`): within merge's default tolerance, and a
  shared subspace needs no more rank than one adapter.  trim and drop are reported for every
  layer, whatever the method.
* rank: REDUNDANT → that k; dare_ties re-factorises at Σ rᵢ (capped at min(m, n)), which is lossy
  by definition (`LOSSY_REASON`; merge reports that loss without failing, and so do the notes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from .pairwise import PairMetrics

VERDICTS = ("SAFE", "REDUNDANT", "IMBALANCED", "CONFLICTING")  # ascending severity
LOSSY_REASON = (
    "lossy: {method} sparsifies ΔW, which makes it full-rank; re-factorised at rank {rank} the merged "
    "layer keeps only part of it (merge reports that loss; it fails only above a --max-error you set)"
)
REDUNDANT_WEIGHT = 0.5  # a redundant pair is averaged: each weight × ½


@dataclass(frozen=True)
class Thresholds:
    overlap_low: float = 0.10  # overlap_excess below this: the subspaces are ~independent
    overlap_high: float = 0.50  # overlap_excess at or above this: mostly shared
    agreement_conflict: float = 0.0  # agreement at or below this (with overlap): conflicting
    conflict_share: float = 0.30  # share of conflicting directions (with overlap): conflicting
    min_interference: float = 0.05  # below this the projections are too weak for a conflict to matter
    agreement_redundant: float = 0.50  # agreement at or above this (with high overlap): redundant
    imbalance: float = 3.0  # max/min of ‖ΔW‖_F at or above this: imbalanced
    min_weight: float = 0.25  # rebalancing never scales an adapter below this
    redundant_loss: float = 0.02  # svd of a redundant pair keeps all but this share of ‖avg‖_F

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_low <= self.overlap_high <= 1:
            raise InvalidArgumentError("thresholds need 0 ≤ overlap_low ≤ overlap_high ≤ 1")
        if not -1 <= self.agreement_conflict < self.agreement_redundant <= 1:
            raise InvalidArgumentError("thresholds need −1 ≤ agreement_conflict < agreement_redundant ≤ 1")
        if self.imbalance < 1 or not 0 < self.min_weight <= 1 or not 0 < self.conflict_share <= 1:
            raise InvalidArgumentError(
                "thresholds need imbalance ≥ 1, 0 < min_weight ≤ 1, 0 < conflict_share ≤ 1"
            )
        if not 0 <= self.redundant_loss < 1:
            raise InvalidArgumentError("thresholds need 0 ≤ redundant_loss < 1")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    method: str
    weights: tuple[float, float]  # multipliers on the user's weights
    density: float | None  # kept share for ties / dare_ties (1 − trim, 1 − drop)
    trim: float
    drop: float
    rank: int  # target rank when the method re-factorises
    compress_first: dict[int, int] = field(default_factory=dict)  # adapter index → rank
    reasons: tuple[str, ...] = ()


def classify(p: PairMetrics, t: Thresholds) -> tuple[str, tuple[str, ...]]:
    """(verdict, reasons) — see the module docstring for the rule order."""
    if p.norm1 == 0 or p.norm2 == 0:
        side = "first" if p.norm1 == 0 else "second"
        return "IMBALANCED", (f"the {side} adapter's update is zero in this layer",)
    ov, agr, share, imb = p.overlap_excess, p.agreement, p.conflict_share, p.imbalance or np.inf
    disagree = agr <= t.agreement_conflict or share >= t.conflict_share
    if ov >= t.overlap_low and p.interference >= t.min_interference and disagree:
        why = f"subspaces overlap ({ov:.2f} above chance) and "
        if agr <= t.agreement_conflict:
            why += f"the updates push them apart (agreement {agr:+.2f} ≤ {t.agreement_conflict:+.2f})"
        else:
            why += (
                f"{100 * share:.0f} % of the principal directions conflict (≥ {100 * t.conflict_share:.0f} %)"
            )
        return "CONFLICTING", (why,)
    if imb >= t.imbalance:
        strong = "first" if p.norm1 > p.norm2 else "second"
        return "IMBALANCED", (f"the {strong} adapter's update is {imb:.1f}× larger (≥ {t.imbalance:g}×)",)
    if ov >= t.overlap_high and agr >= t.agreement_redundant:
        return "REDUNDANT", (f"subspaces mostly shared ({ov:.2f} above chance) and agreeing ({agr:+.2f})",)
    if ov < t.overlap_low:
        return "SAFE", (f"subspaces nearly independent ({ov:.2f} above chance < {t.overlap_low:g})",)
    if p.interference < t.min_interference and disagree:
        return "SAFE", (
            f"overlap {ov:.2f} above chance, but the updates barely project on each other's principal "
            f"directions (interference {p.interference:.3f} < {t.min_interference:g}), so their "
            f"disagreement (agreement {agr:+.2f}) has little weight",
        )
    return "SAFE", (f"moderate overlap ({ov:.2f} above chance) with agreement {agr:+.2f}",)


def recommend(
    p: PairMetrics,
    verdict: str,
    ranks: tuple[int, int],
    t: Thresholds,
    merged_sigma: np.ndarray | None = None,
) -> Recommendation:
    """Concrete merge parameters for one layer (see the module docstring for the formulas).
    `merged_sigma`: singular values of the average ½(w₁ΔW₁ + w₂ΔW₂), needed for REDUNDANT."""
    ov = float(np.clip(p.overlap_excess, 0.0, 1.0))
    trim = 0.1 + 0.4 * ov
    drop = 0.15 + 0.35 * float(np.clip(p.conflict_share / t.conflict_share, 0.0, 1.0))
    weights = (1.0, 1.0)
    rank, reasons = min(sum(ranks), min(p.shape)), []
    if verdict == "CONFLICTING":
        method, density = "dare_ties", 1.0 - drop
        reasons.append(f"DARE-TIES drop {drop:.2f}: grows with the conflicting share {p.conflict_share:.2f}")
        reasons.append(LOSSY_REASON.format(method=method, rank=rank))
    elif verdict == "IMBALANCED":
        method, density = "linear", None
        if p.imbalance is not None:
            damp = float(np.clip(p.imbalance**-0.5, t.min_weight, 1.0))
            weights = (damp, 1.0) if p.norm1 > p.norm2 else (1.0, damp)
            reasons.append(
                f"rebalance: the stronger adapter × {damp:.2f} (gap {p.imbalance:.1f}× → "
                f"{p.imbalance * damp:.1f}×)"
            )
    elif verdict == "REDUNDANT":
        if merged_sigma is None:
            raise ValueError("a REDUNDANT recommendation needs the spectrum of the averaged update")
        method, density, weights = "svd", None, (REDUNDANT_WEIGHT, REDUNDANT_WEIGHT)
        rank, loss = _rank_within(merged_sigma, t.redundant_loss, rank)
        reasons.append(
            f"average the two (weights × {REDUNDANT_WEIGHT:g} each): they say the same thing, a sum "
            f"would double it; exact SVD at rank {rank} keeps all but {100 * loss:.2f} % of the average"
        )
    else:  # SAFE: nothing to resolve, so the exact merge; trim/drop are still reported
        method, density = "linear", None
        reasons.append("exact linear merge: no interference to resolve")
    return Recommendation(
        method, weights, density, round(trim, 4), round(drop, 4), int(rank), {}, tuple(reasons)
    )


def _rank_within(sigma: np.ndarray, loss: float, cap: int) -> tuple[int, float]:
    """(k, relative loss): the smallest k ≥ 1 (at most `cap`) with ‖σ_{>k}‖ ≤ loss·‖σ‖, and the
    loss √(Σ_{i>k} σᵢ²/Σσᵢ²) the truncation then has (0 for a zero update)."""
    s2 = np.sort(np.asarray(sigma, np.float64))[::-1] ** 2  # (p,) descending
    total = float(s2.sum())
    if total == 0:
        return 1, 0.0
    tail = total - np.cumsum(s2)  # (p,) Σ_{i>k} σᵢ² for k = 1..p
    within = np.flatnonzero(tail <= (loss**2) * total)  # rounding can leave tail[-1] a hair above 0
    k = min(int(within[0]) + 1 if within.size else s2.size, cap, s2.size)
    return k, float(np.sqrt(max(tail[k - 1], 0.0) / total))
