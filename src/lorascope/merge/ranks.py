"""The rank a merged layer is written at: one rule, used both to plan the output (every LayerInfo
is known before the first layer is merged, so writers can lay out their files) and to merge.

* `linear`: Σ rᵢ of the inputs as merged (after compress-first): concatenation keeps every factor.
* `svd` (factor): min(plan rank, or max rᵢ by default; Σ rᵢ; min(out, in)): the size of the exact
  SVD of the sum bounds what truncation can keep.
* dense methods (ties, dare_*, magnitude_prune): min(plan rank, or Σ rᵢ of the inputs as read;
  min(out, in)).
* None where the rank is a result of the merge: a plan with `energy`, or an input truncated first
  to a rank above min(out, in) before its factors exist (its SVD may hold fewer directions).
"""

from __future__ import annotations

from collections.abc import Sequence

from .methods import get_method
from .plan import LayerPlan


def after_compress(lp: LayerPlan, index: int, rank: int, cap: int) -> int | None:
    """Input `index`'s rank once the plan's compress-first has run: unchanged, the plan's k, or
    None when k > min(out, in) (`cap`) and only the factors can tell."""
    k = lp.compress_first.get(index)
    if k is None or k >= rank:
        return rank
    return k if k <= cap else None


def output_rank(lp: LayerPlan, read: Sequence[int], merged: Sequence[int | None], cap: int) -> int | None:
    """The written rank of a layer (module docstring).  `read`: the inputs' ranks as read;
    `merged`: their ranks after compress-first (None: not known before merging); `cap`: min(out, in)."""
    method = get_method(lp.method)
    if lp.energy is not None:
        return None
    if lp.method == "linear" or method.kind == "factor":
        if any(r is None for r in merged):
            return None
        ranks = [int(r) for r in merged if r is not None]
        if lp.method == "linear":
            return sum(ranks)
        if "rank" not in method.params:  # a factor method without a rank: its result decides
            return None
        return min(lp.rank or max(ranks), sum(ranks), cap)
    return min(lp.rank or sum(read), cap)
