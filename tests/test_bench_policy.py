"""Bench verdicts, aggregation, policy and validation level on hand-computed numbers (no torch)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lorascope.bench.aggregate import aggregate, seed_best, stats, validation_level, verdict
from lorascope.bench.config import PolicySection
from lorascope.bench.results import ProbeSummary, SeedResult, VariantResult
from lorascope.bench.variants import plan_summary, snap, training_groups

POLICY = PolicySection(pass_rate_min=0.67, worst_delta_min=-0.025, tolerance=-0.025, probe_min_accuracy=0.7)


def variant(acc, reduction, rank, probe, trainable=None):
    delta = acc - probe
    return VariantResult(
        status="ok",
        accuracy=acc,
        delta_vs_probe=delta,
        param_reduction=reduction,
        param_reduction_trainable=reduction / 2 if trainable is None else trainable,
        verdict=verdict(delta, POLICY.tolerance),
        rank=rank,
        rank_mean=float(rank),
    )


def seed_doc(seed, probe, variants, status="ok"):
    compressed = {name: variant(acc, red, rank, probe) for name, (acc, red, rank) in variants.items()}
    return SeedResult(seed, status, ProbeSummary(16, 100, 120, probe, 50), compressed)


def test_verdict_boundary():
    assert verdict(-0.025, -0.025) == "PASS"
    assert verdict(-0.0251, -0.025) == "FAIL"
    assert verdict(0.01, -0.025) == "PASS"


def test_stats_sample_std():
    s = stats([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert stats([0.5]).std == 0.0


def test_aggregate_hand_computed():
    docs = [
        seed_doc(1, 0.80, {"a": (0.79, 0.875, 8), "b": (0.80, 0.5, 32)}),
        seed_doc(2, 0.82, {"a": (0.79, 0.875, 8), "b": (0.81, 0.5, 32)}),  # a: Δ −0.03 FAIL
        seed_doc(3, 0.84, {"a": (0.83, 0.875, 8), "b": (0.85, 0.5, 32)}),
        seed_doc(4, 0.55, {}, status="UNDERTRAINED"),
    ]
    agg = aggregate(docs, POLICY, steps=500)
    a, b = agg.variant_results["a"], agg.variant_results["b"]
    assert a.pass_count == 2 and a.fail_count == 1 and a.pass_rate == pytest.approx(2 / 3)
    assert a.delta_worst == pytest.approx(-0.03) and a.delta_best == pytest.approx(-0.01)
    assert a.delta_mean == pytest.approx((-0.01 - 0.03 - 0.01) / 3)
    assert a.accuracy_std == pytest.approx(
        math.sqrt(((0.79 - 0.8033333) ** 2 * 2 + (0.83 - 0.8033333) ** 2) / 2), rel=1e-4
    )
    # a: pass rate 0.667 < 0.67 and worst −0.03 < −0.025 → not compliant; b is
    ca, cb = agg.policy_compliance["a"], agg.policy_compliance["b"]
    assert not ca.policy_compliant and not ca.meets_pass_rate and not ca.meets_worst_delta
    assert cb.policy_compliant and b.delta_worst == pytest.approx(-0.01)
    assert agg.best_compression is not None and agg.best_compression.variant == "b"
    assert agg.best_compression.param_reduction == pytest.approx(0.5)
    assert agg.n_seeds == 4 and agg.n_seeds_evaluated == 3
    assert agg.probe_baseline is not None and agg.probe_baseline.mean == pytest.approx(0.82)
    assert agg.validation.level == "certifiable"
    doc = agg.to_dict()  # the bench_aggregate.json shape
    assert doc["safety_policy"]["pass_rate_min"] == 0.67 and doc["any_compliant"]
    assert doc["probe_baseline"]["accuracy_mean"] == pytest.approx(0.82)
    assert doc["seed_runs"][3] == {"seed": 4, "status": "UNDERTRAINED"}
    assert doc["validation_classification"]["level"] == "certifiable"


def test_policy_overrides_change_compliance():
    docs = [seed_doc(s, 0.80, {"a": (0.77, 0.9, 4)}) for s in (1, 2)]
    strict = aggregate(docs, POLICY, steps=100)
    assert not strict.any_compliant and strict.best_compression is None
    loose = aggregate(docs, replace(POLICY, worst_delta_min=-0.05), steps=100)
    # every seed FAILs (Δ −0.03 < tolerance) → pass rate 0 → still not compliant
    assert not loose.any_compliant
    looser = replace(POLICY, worst_delta_min=-0.05, pass_rate_min=0.0)
    best = aggregate(docs, looser, steps=100).best_compression
    assert best is not None and best.variant == "a"


def test_a_plan_that_compresses_nothing_is_never_best():
    docs = [seed_doc(s, 0.80, {"same": (0.80, 0.0, 16)}) for s in (1, 2, 3)]
    agg = aggregate(docs, POLICY, steps=500)
    assert agg.policy_compliance["same"].policy_compliant
    assert agg.best_compression is None and not agg.any_compliant


def test_best_variant_ties_are_broken_one_way_per_seed_and_over_seeds():
    """Equal LoRA-parameter reduction: fewer trainable parameters wins, then higher accuracy, then
    the variant listed first; bench.json (per seed) and bench_aggregate.json agree."""
    probe = 0.80
    # uniform_p90 ties uniform_median on every count: the one listed first (uniform_median) wins,
    # whatever the names' alphabetical order
    tied = {
        "uniform_median": variant(0.80, 0.5, 8, probe, trainable=0.4),
        "uniform_p90": variant(0.80, 0.5, 8, probe, trainable=0.4),
        "per_layer": variant(0.81, 0.25, 12, probe),
    }
    seeds = [SeedResult(s, "ok", ProbeSummary(16, 100, 120, probe, 50), tied) for s in (1, 2, 3)]
    assert seed_best(tied) == "uniform_median"
    best = aggregate(seeds, POLICY, steps=500).best_compression
    assert best is not None and best.variant == "uniform_median"
    # listed the other way round, the other one wins: order, not name
    flipped = {k: tied[k] for k in ("uniform_p90", "uniform_median", "per_layer")}
    seeds = [replace(s, compressed=flipped) for s in seeds]
    assert seed_best(flipped) == "uniform_p90"
    assert aggregate(seeds, POLICY, steps=500).best_compression.variant == "uniform_p90"
    # equal LoRA reduction, but energy saves more trainable parameters (a smaller head): energy wins
    # even with lower accuracy; at equal trainable counts the higher accuracy wins
    more = {
        **tied,
        "energy": variant(0.795, 0.5, 8, probe, trainable=0.45),
        "budget": variant(0.805, 0.5, 8, probe, trainable=0.4),
    }
    seeds = [replace(s, compressed=more) for s in seeds]
    assert seed_best(more) == "energy"
    assert aggregate(seeds, POLICY, steps=500).best_compression.variant == "energy"
    less = {k: v for k, v in more.items() if k != "energy"}
    seeds = [replace(s, compressed=less) for s in seeds]
    assert seed_best(less) == "budget"
    assert aggregate(seeds, POLICY, steps=500).best_compression.variant == "budget"


@pytest.mark.parametrize(
    ("n", "steps", "level"),
    [
        (1, 1000, "screening"),
        (2, 1000, "screening_plus"),
        (3, 499, "screening_plus"),
        (3, 500, "certifiable"),
    ],
)
def test_validation_level(n, steps, level):
    assert validation_level(n, steps).level == level


def test_snap_to_allowed_ranks():
    assert snap(5, [2, 4, 8, 16], 64) == 8
    assert snap(20, [2, 4, 8, 16], 64) == 16  # none above: the largest allowed
    assert snap(5, None, 4) == 4  # capped at the probe's rank
    assert snap(0, None, 8) == 1


def test_identical_plans_train_once():
    plans = {
        "uniform_median": {"x": 8, "y": 8},
        "uniform_p90": {"x": 8, "y": 8},
        "per_layer": {"x": 4, "y": 8},
        "energy": {"x": 4, "y": 8},
        "budget": {"x": 16, "y": 16},  # the probe's own ranks
        "truncate": {"x": 8, "y": 8},
    }
    uses, skipped = training_groups(plans, probe_r=16, max_candidates=None)
    assert uses == {
        "uniform_median": "uniform_median",
        "uniform_p90": "uniform_median",
        "per_layer": "per_layer",
        "energy": "per_layer",
        "budget": "probe",
    }
    assert skipped == []
    uses, skipped = training_groups(plans, probe_r=16, max_candidates=1)
    assert skipped == ["per_layer", "energy"] and uses["uniform_p90"] == "uniform_median"


def test_plan_summary_counts_lora_factors():
    s = plan_summary({"x": 4, "y": 8, "z": 8}, {"x": 10, "y": 20, "z": 30})
    assert s.rank == 8 and s.rank_pattern == {"x": 4} and not s.uniform
    assert s.rank_mean == pytest.approx(20 / 3)
    assert s.lora_params == 4 * 10 + 8 * 20 + 8 * 30
