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
  best_compression the compliant variant with the largest mean param_reduction > 0 (ties: higher
                   mean accuracy, then name)
  validation level screening (1 seed), screening_plus (≥ 2 seeds), certifiable (≥ 3 seeds and
                   ≥ 500 training steps)
Seeds whose probe failed the quality gate (UNDERTRAINED) are counted but enter no statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA = "lorascope.bench_aggregate/v1"
POLICY_NAME = "lorascope-default"


def verdict(delta: float, tolerance: float) -> str:
    return "PASS" if delta >= tolerance - 1e-12 else "FAIL"


def stats(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def validation_level(n_seeds: int, steps: int) -> dict[str, Any]:
    if n_seeds >= 3 and steps >= 500:
        level, why = "certifiable", f"{n_seeds} seeds and {steps} steps (≥ 3 seeds, ≥ 500 steps)"
    elif n_seeds >= 2:
        level = "screening_plus"
        why = f"{n_seeds} seeds, {steps} steps; certifiable needs ≥ 3 seeds and ≥ 500 steps"
    else:
        level, why = "screening", f"{n_seeds} seed: no estimate of seed-to-seed variation"
    return {
        "level": level,
        "rationale": why,
        "is_multiseed": n_seeds > 1,
        "n_seeds": n_seeds,
        "max_steps": steps,
    }


def safety_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": POLICY_NAME,
        "pass_rate_min": policy["pass_rate_min"],
        "worst_delta_min": policy["worst_delta_min"],
        "tolerance": policy["tolerance"],
    }


def _variant(rows: list[dict[str, Any]], policy: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    acc = stats([r["accuracy"] for r in rows])
    delta = stats([r["delta_vs_probe"] for r in rows])
    red = stats([r["param_reduction"] for r in rows])
    red_all = stats([r["param_reduction_trainable"] for r in rows])
    passes = sum(r["verdict"] == "PASS" for r in rows)
    pass_rate = passes / len(rows)
    result = {
        "n_seeds": len(rows),
        "pass_count": passes,
        "fail_count": len(rows) - passes,
        "pass_rate": pass_rate,
        "verdict": "PASS" if passes == len(rows) else ("FAIL" if passes == 0 else "MIXED"),
        "accuracy_mean": acc["mean"],
        "accuracy_std": acc["std"],
        "accuracy_min": acc["min"],
        "accuracy_max": acc["max"],
        "delta_mean": delta["mean"],
        "delta_std": delta["std"],
        "delta_worst": delta["min"],
        "delta_best": delta["max"],
        "param_reduction_mean": red["mean"],
        "param_reduction_std": red["std"],
        "param_reduction_trainable_mean": red_all["mean"],
        # the mean over seeds of each plan's mean rank over layers (documents without it: `rank`)
        "rank_mean": sum(r.get("rank_mean", r["rank"]) for r in rows) / len(rows),
    }
    meets_rate = pass_rate >= policy["pass_rate_min"] - 1e-12
    meets_worst = delta["min"] >= policy["worst_delta_min"] - 1e-12
    compliance = {
        "policy_compliant": meets_rate and meets_worst,
        "meets_pass_rate": meets_rate,
        "meets_worst_delta": meets_worst,
        "pass_rate": pass_rate,
        "worst_delta": delta["min"],
        "policy": POLICY_NAME,
    }
    return result, compliance


def aggregate(
    seed_docs: Sequence[Mapping[str, Any]], policy: Mapping[str, Any], steps: int
) -> dict[str, Any]:
    """The combined document from every seed's bench.json (see the module docstring)."""
    ok = [d for d in seed_docs if d["status"] == "ok"]
    variants: list[str] = []
    for d in ok:
        variants += [v for v in d["compressed"] if v not in variants]
    results, compliance = {}, {}
    for v in variants:
        rows = [d["compressed"][v] for d in ok if d["compressed"].get(v, {}).get("accuracy") is not None]
        if rows:
            results[v], compliance[v] = _variant(rows, policy)
    probe = stats([d["probe"]["accuracy"] for d in ok]) if ok else None
    # a plan that kept the probe's ranks compresses nothing: compliant, but never "best compression"
    compliant = [
        v for v in results if compliance[v]["policy_compliant"] and results[v]["param_reduction_mean"] > 0
    ]
    best = max(
        compliant,
        key=lambda v: (results[v]["param_reduction_mean"], results[v]["accuracy_mean"], v),
        default=None,
    )
    return {
        "schema": SCHEMA,
        "n_seeds": len(seed_docs),
        "n_seeds_evaluated": len(ok),
        "seed_runs": [{"seed": d["seed"], "status": d["status"]} for d in seed_docs],
        "validation_classification": validation_level(len(ok), steps),
        "probe_baseline": None if probe is None else {f"accuracy_{k}": v for k, v in probe.items()},
        "variant_results": results,
        "policy_compliance": compliance,
        "safety_policy": safety_policy(policy),
        "best_compression": None
        if best is None
        else {
            "variant": best,
            "param_reduction": results[best]["param_reduction_mean"],
            "param_reduction_trainable": results[best]["param_reduction_trainable_mean"],
            "delta_worst": results[best]["delta_worst"],
            "counted_as": "LoRA factor parameters",
        },
        "any_compliant": best is not None,
    }
