"""Candidate rank plans from the probe's audit: {variant: {module path: rank}}, no torch.

uniform_median / uniform_p90  the audit's global suggestion (energy rank at τ, median / p90 over
                              layers, rounded up by the configured rule): one rank everywhere
per_layer                     the audit's per-layer suggestion (a PEFT rank_pattern)
energy                        compress's planner, mode energy τ (smallest k keeping τ of Σσ²)
budget                        compress's planner, mode budget_ratio x (best energy for x of the params)
truncate / truncate_tune      the controls: the probe itself SVD-truncated to `control_plan`'s ranks
                              (and then briefly tuned); they are never retrained from scratch

Every rank is capped at the probe's and, with `allowed_ranks`, snapped up to the smallest allowed
rank ≥ it (the largest allowed one when none is).  `training_groups` groups variants whose plans are
identical, so each distinct plan is trained once; a plan equal to the probe's is the probe.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..audit import AuditOptions, AuditReport
from ..compress import RankMode, plan_ranks
from ..rounding import Rounding
from .config import CONTROLS, RETRAINED, CompressionSection
from .results import ProbeFacts

Plan = dict[str, int]


def audit_options(compression: CompressionSection) -> AuditOptions:
    return AuditOptions(
        thresholds=(float(compression.energy),), rounding=Rounding.parse(compression.rounding)
    )


def snap(k: int, allowed: Sequence[int] | None, cap: int) -> int:
    k = max(1, min(int(k), cap))
    if not allowed:
        return k
    usable = [a for a in allowed if a <= cap] or [cap]
    i = bisect.bisect_left(usable, k)
    return usable[i] if i < len(usable) else usable[-1]


def plans_from_audit(report: AuditReport, compression: CompressionSection, probe_r: int) -> dict[str, Plan]:
    """Every configured variant's plan (controls get `control_plan`'s), in config variant order."""
    rule = Rounding.parse(compression.rounding)
    names = [layer.name for layer in report.layers]
    raw: dict[str, Mapping[str, int]] = {
        "uniform_median": dict.fromkeys(names, int(report.suggestions["median"]["rank"])),
        "uniform_p90": dict.fromkeys(names, int(report.suggestions["p90"]["rank"])),
        "per_layer": {layer.name: int(layer.suggested_rank) for layer in report.layers},
        "energy": plan_ranks(report, RankMode("energy", float(compression.energy), rounding=rule)),
        "budget": plan_ranks(
            report, RankMode("budget_ratio", float(compression.budget_ratio), rounding=rule)
        ),
    }
    allowed = compression.allowed_ranks
    snapped = {v: {n: snap(k, allowed, probe_r) for n, k in plan.items()} for v, plan in raw.items()}
    out: dict[str, Plan] = {}
    for variant in compression.variants:
        source = compression.control_plan if variant in CONTROLS else variant
        out[variant] = dict(snapped[source])
    return out


def probe_facts(report: AuditReport, energy: float) -> ProbeFacts:
    """The audit's view of the probe (its summary and global suggestions are the audit's mappings)."""
    from ..metrics import energy_key

    s, key = report.summary, energy_key(float(energy))
    return ProbeFacts(
        utilization_mean=s["utilisation"]["mean"] if s["utilisation"] else None,
        energy_rank_90_p50=s[key]["median"] if s[key] else None,
        energy_rank_90_p90=s[key]["p90"] if s[key] else None,
        suggested_r_global_median=report.suggestions["median"]["rank"],
        suggested_r_global_90=report.suggestions["p90"]["rank"],
        energy_threshold=float(energy),
    )


def plan_key(plan: Mapping[str, int]) -> str:
    text = json.dumps(sorted(plan.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def training_groups(
    plans: Mapping[str, Plan], probe_r: int, max_candidates: int | None
) -> tuple[dict[str, str], list[str]]:
    """({retrained variant: the variant whose training it uses, or "probe"}, variants skipped by
    max_candidates).  The first variant (in config order) with a plan trains it."""
    owner_of: dict[str, str] = {}
    uses: dict[str, str] = {}
    skipped: list[str] = []
    for variant, plan in plans.items():
        if variant not in RETRAINED:
            continue
        if all(k == probe_r for k in plan.values()):
            uses[variant] = "probe"
            continue
        key = plan_key(plan)
        if key not in owner_of:
            if max_candidates is not None and len(owner_of) >= max_candidates:
                skipped.append(variant)
                continue
            owner_of[key] = variant
        uses[variant] = owner_of[key]
    return uses, skipped


@dataclass(frozen=True)
class PlanSummary:
    rank: int  # the most common rank (Gradience's single number)
    rank_min: int
    rank_max: int
    rank_mean: float  # over layers
    uniform: bool
    rank_pattern: dict[str, int] = field(default_factory=dict)  # the layers whose rank is not `rank`
    lora_params: int = 0  # r·(in+out) summed over layers


def plan_summary(plan: Mapping[str, int], layer_sizes: Mapping[str, int]) -> PlanSummary:
    """A plan's ranks in a few numbers, and its LoRA factor parameters."""
    ranks = list(plan.values())
    common = Counter(ranks).most_common(1)[0][0] if ranks else 0
    return PlanSummary(
        rank=common,
        rank_min=min(ranks, default=0),
        rank_max=max(ranks, default=0),
        rank_mean=sum(ranks) / len(ranks) if ranks else 0.0,
        uniform=len(set(ranks)) <= 1,
        rank_pattern={n: k for n, k in sorted(plan.items()) if k != common},
        lora_params=sum(k * layer_sizes[n] for n, k in plan.items()),
    )
