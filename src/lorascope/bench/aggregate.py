"""Verdicts, aggregation across seeds, the safety policy and the validation level; pure Python.

Definitions (Gradience's key names where it has them):
  delta_vs_probe   variant accuracy − the same seed's probe accuracy
  verdict          PASS iff delta_vs_probe ≥ policy.tolerance (default −0.025), else FAIL
  pass_rate        PASS seeds / evaluated seeds
  delta_worst      the smallest delta over seeds (the worst seed)
  policy_compliant pass_rate ≥ pass_rate_min (0.67) and delta_worst ≥ worst_delta_min (−0.025)
  std              sample standard deviation (n − 1); 0.0 for a single seed
  param_reduction  1 − variant LoRA factor params / probe LoRA factor params: the headline count.
                   param_reduction_trainable counts every trainable parameter (heads included).
  best_compression per seed: the PASS variant with the largest param_reduction > 0; over seeds: the
                   compliant variant with the largest mean param_reduction > 0.  Ties, in both: the
                   larger param_reduction_trainable (fewer trainable parameters), then the higher
                   accuracy, then the variant listed first in compression.variants (`best_variant`).
  validation level screening (1 seed), screening_plus (≥ 2 seeds), certifiable (≥ 3 seeds and
                   ≥ 500 training steps)
Seeds whose probe failed the quality gate (UNDERTRAINED) are counted but enter no statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .config import PolicySection
from .results import (
    BenchResult,
    BestCompression,
    Compliance,
    SeedResult,
    Stats,
    ValidationLevel,
    VariantResult,
    VariantStats,
)

Candidate = tuple[str, float, float, float]  # (variant, param_reduction, _trainable, accuracy)


def verdict(delta: float, tolerance: float) -> str:
    return "PASS" if delta >= tolerance - 1e-12 else "FAIL"


def stats(values: Sequence[float]) -> Stats:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Stats(mean=mean, std=std, min=min(values), max=max(values))


def best_variant(candidates: Sequence[Candidate]) -> str | None:
    """The one tie-break rule (module docstring); `candidates` are in config variant order."""
    if not candidates:
        return None
    order = range(len(candidates))
    i = max(order, key=lambda i: (*candidates[i][1:], -i))
    return candidates[i][0]


def seed_best(compressed: Mapping[str, VariantResult]) -> str | None:
    """A seed's best compression: its PASS variants that compress, under `best_variant`'s rule."""
    return best_variant(
        [
            (v, r.param_reduction, r.param_reduction_trainable, r.accuracy or 0.0)
            for v, r in compressed.items()
            if r.verdict == "PASS" and r.param_reduction > 0
        ]
    )


def validation_level(n_seeds: int, steps: int) -> ValidationLevel:
    if n_seeds >= 3 and steps >= 500:
        level, why = "certifiable", f"{n_seeds} seeds and {steps} steps (≥ 3 seeds, ≥ 500 steps)"
    elif n_seeds >= 2:
        level = "screening_plus"
        why = f"{n_seeds} seeds, {steps} steps; certifiable needs ≥ 3 seeds and ≥ 500 steps"
    else:
        level, why = "screening", f"{n_seeds} seed: no estimate of seed-to-seed variation"
    return ValidationLevel(level, why, n_seeds > 1, n_seeds, steps)


def _variant(rows: list[VariantResult], policy: PolicySection) -> tuple[VariantStats, Compliance]:
    acc = stats([r.accuracy for r in rows if r.accuracy is not None])
    delta = stats([r.delta_vs_probe for r in rows])
    red = stats([r.param_reduction for r in rows])
    red_all = stats([r.param_reduction_trainable for r in rows])
    passes = sum(r.verdict == "PASS" for r in rows)
    pass_rate = passes / len(rows)
    result = VariantStats(
        n_seeds=len(rows),
        pass_count=passes,
        fail_count=len(rows) - passes,
        pass_rate=pass_rate,
        verdict="PASS" if passes == len(rows) else ("FAIL" if passes == 0 else "MIXED"),
        accuracy_mean=acc.mean,
        accuracy_std=acc.std,
        accuracy_min=acc.min,
        accuracy_max=acc.max,
        delta_mean=delta.mean,
        delta_std=delta.std,
        delta_worst=delta.min,
        delta_best=delta.max,
        param_reduction_mean=red.mean,
        param_reduction_std=red.std,
        param_reduction_trainable_mean=red_all.mean,
        rank_mean=sum(r.rank_mean for r in rows) / len(rows),
    )
    meets_rate = pass_rate >= policy.pass_rate_min - 1e-12
    meets_worst = delta.min >= policy.worst_delta_min - 1e-12
    return result, Compliance(meets_rate and meets_worst, meets_rate, meets_worst, pass_rate, delta.min)


def aggregate(seeds: Sequence[SeedResult], policy: PolicySection, steps: int) -> BenchResult:
    """The combined result of every seed (see the module docstring)."""
    ok = [s for s in seeds if s.status == "ok"]
    variants: list[str] = []
    for s in ok:
        variants += [v for v in s.compressed if v not in variants]
    results, compliance = {}, {}
    for v in variants:
        rows = [s.compressed[v] for s in ok if v in s.compressed and s.compressed[v].accuracy is not None]
        if rows:
            results[v], compliance[v] = _variant(rows, policy)
    # a plan that kept the probe's ranks compresses nothing: compliant, but never "best compression"
    best = best_variant(
        [
            (v, r.param_reduction_mean, r.param_reduction_trainable_mean, r.accuracy_mean)
            for v, r in results.items()
            if compliance[v].policy_compliant and r.param_reduction_mean > 0
        ]
    )
    top = None
    if best is not None:
        r = results[best]
        top = BestCompression(best, r.param_reduction_mean, r.param_reduction_trainable_mean, r.delta_worst)
    return BenchResult(
        seed_runs=tuple((s.seed, s.status) for s in seeds),
        validation=validation_level(len(ok), steps),
        probe_baseline=stats([s.probe.accuracy for s in ok]) if ok else None,
        variant_results=results,
        policy_compliance=compliance,
        policy=policy,
        best_compression=top,
    )
