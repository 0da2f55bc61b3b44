"""Turning per-layer energy ranks into rank suggestions.

Rules (all documented in docs/metrics.md):
* Global suggestions: the median and the 90th percentile (numpy's linear interpolation) of the
  per-layer energy ranks k@τ, rounded *up* to an integer, then up by the rounding rule, then
  capped at the largest allocated rank and floored at `min_rank`.
* Per-layer suggestion: the layer's own k@τ rounded up by the rule, within [min_rank, r_layer].
  Dead layers get `min_rank`.
* Rounding rules (lorascope.rounding, shared with compress): "multiple:N" (default N=4), "pow2", "none".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..metrics import percentile
from ..rounding import Rounding
from ..types import peft_alpha


def global_rank(energy_ranks: Sequence[float], q: float, rounding: Rounding, cap: int, min_rank: int) -> int:
    """Suggested uniform rank from the q-th percentile (0..100) of per-layer energy ranks."""
    if not len(energy_ranks):
        return min_rank
    value = percentile(energy_ranks, q)
    return int(min(max(rounding.up(value), min_rank), cap))


def layer_rank(k: int, allocated: int, rounding: Rounding, min_rank: int, dead: bool) -> int:
    if dead:
        return min(min_rank, allocated)
    return int(min(max(rounding.up(k), min_rank), allocated))


def mode_rank(ranks: Sequence[int]) -> int:
    """Most common rank; ties go to the larger rank (the safer default)."""
    counts = Counter(ranks)
    best = max(counts.values())
    return max(r for r, c in counts.items() if c == best)


def alpha_for(scale: float, rank: int, rslora: bool) -> float:
    """The lora_alpha that gives `scale` at `rank` (PEFT: scale = alpha/r, or alpha/√r)."""
    return float(round(peft_alpha(scale, rank, rslora), 6))


def peft_patterns(
    names: Sequence[str], ranks: Sequence[int], scales: Sequence[float], rslora: bool
) -> dict[str, object]:
    """A PEFT config fragment: r, lora_alpha, rank_pattern and alpha_pattern that keep every layer's
    scale.  Pattern keys are full module paths relative to the base model (no `base_model.model.`
    prefix, which PEFT would silently ignore), so each matches exactly one module."""
    default_r = mode_rank(ranks)
    default_scale = Counter(scales).most_common(1)[0][0]
    default_alpha = alpha_for(default_scale, default_r, rslora)
    rank_pattern, alpha_pattern = {}, {}
    for name, r, s in zip(names, ranks, scales, strict=True):
        if r != default_r:
            rank_pattern[name] = int(r)
        a = alpha_for(s, r, rslora)
        if a != default_alpha:
            alpha_pattern[name] = a
    return {
        "r": default_r,
        "lora_alpha": default_alpha,
        "use_rslora": bool(rslora),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
