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
* compress first (REDUNDANT): a side whose entropy effective rank < `over_provisioned`·r is
  truncated to its energy rank k@τ before merging.
* method: SAFE → linear (exact concatenation: nothing to resolve, and sparsifying methods make ΔW
  full-rank, so re-factorising them loses 10-30 % of it at Σ rᵢ); REDUNDANT → ties;
  CONFLICTING → dare_ties; IMBALANCED → linear with rebalanced weights.  trim and drop are
  reported for every layer, whatever the method.
* rank (for methods that re-factorise): REDUNDANT → max(rᵢ), otherwise Σ rᵢ (capped at min(m, n)).
  Such a recommendation says it is lossy (`LOSSY_REASON`), and so do the plan's notes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InvalidArgumentError
from .pairwise import PairMetrics

VERDICTS = ("SAFE", "REDUNDANT", "IMBALANCED", "CONFLICTING")  # ascending severity
LOSSY_REASON = (
    "lossy: {method} sparsifies ΔW, which makes it full-rank; re-factorised at rank {rank} the merged "
    "layer keeps only part of it (merge reports each layer's loss and exits 1 above --max-error)"
)


@dataclass(frozen=True)
class Thresholds:
    overlap_low: float = 0.10  # overlap_excess below this: the subspaces are ~independent
    overlap_high: float = 0.50  # overlap_excess at or above this: mostly shared
    agreement_conflict: float = 0.0  # agreement at or below this (with overlap): conflicting
    conflict_share: float = 0.30  # share of conflicting directions (with overlap): conflicting
    min_interference: float = 0.05  # below this the projections are too weak for a conflict to matter
    agreement_redundant: float = 0.50  # agreement at or above this (with high overlap): redundant
    imbalance: float = 3.0  # max/min of ‖ΔW‖_F at or above this: imbalanced
    over_provisioned: float = 0.40  # effective rank < this·r: compress before merging
    min_weight: float = 0.25  # rebalancing never scales an adapter below this

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_low <= self.overlap_high <= 1:
            raise InvalidArgumentError("thresholds need 0 ≤ overlap_low ≤ overlap_high ≤ 1")
        if not -1 <= self.agreement_conflict < self.agreement_redundant <= 1:
            raise InvalidArgumentError("thresholds need −1 ≤ agreement_conflict < agreement_redundant ≤ 1")
        if self.imbalance < 1 or not 0 < self.min_weight <= 1 or not 0 < self.conflict_share <= 1:
            raise InvalidArgumentError(
                "thresholds need imbalance ≥ 1, 0 < min_weight ≤ 1, 0 < conflict_share ≤ 1"
            )

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
    p: PairMetrics, verdict: str, ranks: tuple[int, int], eff_ranks, t: Thresholds
) -> Recommendation:
    """Concrete merge parameters for one layer (see the module docstring for the formulas)."""
    ov = float(np.clip(p.overlap_excess, 0.0, 1.0))
    trim = 0.1 + 0.4 * ov
    drop = 0.15 + 0.35 * float(np.clip(p.conflict_share / t.conflict_share, 0.0, 1.0))
    weights = (1.0, 1.0)
    rank, compress_first, reasons = min(sum(ranks), min(p.shape)), {}, []
    if verdict == "CONFLICTING":
        method, density = "dare_ties", 1.0 - drop
        reasons.append(f"DARE-TIES drop {drop:.2f}: grows with the conflicting share {p.conflict_share:.2f}")
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
        method, density, rank = "ties", 1.0 - trim, max(ranks)
        reasons.append(f"TIES trim {trim:.2f}: grows with the overlap {ov:.2f}")
        for i, (r, eff, k) in enumerate(zip(ranks, eff_ranks, (p.k1, p.k2), strict=True)):
            if r and eff < t.over_provisioned * r:
                compress_first[i] = max(k, 1)
                reasons.append(f"adapter {i + 1} uses {eff:.1f} of r={r}: compress it to {max(k, 1)} first")
    else:  # SAFE: nothing to resolve, so the exact merge; trim/drop are still reported
        method, density = "linear", None
        reasons.append("exact linear merge: no interference to resolve")
    if method != "linear":
        reasons.append(LOSSY_REASON.format(method=method, rank=rank))
    return Recommendation(
        method, weights, density, round(trim, 4), round(drop, 4), int(rank), compress_first, tuple(reasons)
    )
