"""The bench's typed results: stage records, a seed's result (bench.json), the aggregate
(bench_aggregate.json).  Frozen dataclasses; `to_dict()` gives the JSON documents, whose key names
and shapes are the bench's file format (`lorascope.bench/v1`, `lorascope.bench_aggregate/v1`).

Stage records (`TrainedRecord`, `AuditRecord`) are what each stage folder's stage.json holds; they are
read back on --resume with `from_dict`, so their keys never change meaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import jsontext
from ..validate import to_dict as _plain
from .config import BenchConfig, PolicySection

SEED_SCHEMA = "lorascope.bench/v1"
AGGREGATE_SCHEMA = "lorascope.bench_aggregate/v1"
POLICY_NAME = "lorascope-default"
PARAM_COUNTING = {
    "params": "LoRA factor parameters r·(in+out), summed over LoRA layers (the headline)",
    "trainable_params": "LoRA factors plus saved heads (modules_to_save): all trainable",
}
Plan = dict[str, int]


def _from(cls: Any, doc: Mapping[str, Any]) -> Any:
    return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls) if f.name in doc})


# --- stage records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """A model's held-out score (eval.json)."""

    accuracy: float
    correct: int
    n: int
    metric: str  # "accuracy" | "exact_match"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class TrainedRecord:
    """A trained (or only evaluated) model's stage: held-out score, parameter counts, seconds."""

    accuracy: float
    correct: int
    n: int
    metric: str  # "accuracy" | "exact_match"
    lora_params: int
    trainable_params: int
    train_s: float
    eval_s: float
    steps: int
    layers: tuple[str, ...] | None = None  # the probe only: its LoRA layers

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TrainedRecord:
        rec = _from(cls, doc)
        return rec if rec.layers is None else dataclasses.replace(rec, layers=tuple(rec.layers))

    def to_dict(self) -> dict[str, Any]:
        doc = _plain(self)
        if self.layers is None:
            del doc["layers"]
        return doc


@dataclass(frozen=True)
class ProbeFacts:
    """What the probe's audit says about it."""

    utilization_mean: float | None
    energy_rank_90_p50: float | None
    energy_rank_90_p90: float | None
    suggested_r_global_median: int
    suggested_r_global_90: int
    energy_threshold: float


@dataclass(frozen=True)
class AuditRecord:
    plans: Mapping[str, Plan]  # {variant: {module path: rank}}, in config variant order
    probe_facts: ProbeFacts
    layer_sizes: Mapping[str, int]  # {module path: in + out}
    audit_s: float

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuditRecord:
        return cls(doc["plans"], _from(ProbeFacts, doc["probe_facts"]), doc["layer_sizes"], doc["audit_s"])

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


# --- one seed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    lorascope: str
    python: str
    torch: str
    transformers: str
    peft: str
    device: str
    threads: int
    git_commit: str | None
    config_hash: str


@dataclass(frozen=True)
class ProbeSummary:
    rank: int
    params: int
    trainable_params: int
    accuracy: float
    n_eval: int
    facts: ProbeFacts | None = None  # absent when the seed stopped at the quality gate

    def to_dict(self) -> dict[str, Any]:
        doc = {k: v for k, v in _plain(self).items() if k != "facts"}
        return {**doc, **(_plain(self.facts) if self.facts else {})}


@dataclass(frozen=True)
class VariantResult:
    """One variant in one seed.  status "ok": every field is set; "skipped": only `reason`."""

    status: str  # "ok" | "skipped"
    accuracy: float | None = None
    reason: str | None = None
    rank: int = 0  # the most common rank over layers
    rank_min: int = 0
    rank_max: int = 0
    rank_mean: float = 0.0  # over layers
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)  # layers off `rank`
    params: int = 0  # LoRA factor parameters
    trainable_params: int = 0
    delta_vs_probe: float = 0.0
    param_reduction: float = 0.0
    param_reduction_trainable: float = 0.0
    verdict: str = ""  # PASS | FAIL
    trained_as: str = ""  # the stage whose model this variant is
    retrained: bool = False

    @classmethod
    def skipped(cls, reason: str) -> VariantResult:
        return cls(status="skipped", reason=reason)

    def to_dict(self) -> dict[str, Any]:
        if self.status == "skipped":
            return {"status": self.status, "reason": self.reason, "accuracy": None}
        doc = {k: v for k, v in _plain(self).items() if k not in ("status", "reason")}
        return {**doc, "status": self.status}


@dataclass(frozen=True)
class SeedContext:
    """Where a seed's result comes from (the bench.json header)."""

    bench_version: str
    timestamp: str
    env: Environment
    model: str  # ModelSection.label()
    task: Mapping[str, Any]
    policy: PolicySection


@dataclass(frozen=True)
class SeedResult:
    seed: int
    status: str  # "ok" | "UNDERTRAINED"
    probe: ProbeSummary
    compressed: Mapping[str, VariantResult]  # in config variant order
    notes: tuple[str, ...] = ()
    best_compression: str | None = None
    context: SeedContext | None = None

    @property
    def recommendations_validated(self) -> bool:
        return any(r.verdict == "PASS" and r.param_reduction > 0 for r in self.compressed.values())

    def to_dict(self) -> dict[str, Any]:
        c = self.context
        head: dict[str, Any] = {"schema": SEED_SCHEMA}
        if c is not None:
            head |= {"bench_version": c.bench_version, "seed": self.seed, "status": self.status}
            head |= {"timestamp": c.timestamp, "git_commit": c.env.git_commit, "env": _plain(c.env)}
            head |= {"model": c.model, "task": dict(c.task)}
        else:
            head |= {"seed": self.seed, "status": self.status}
        doc = {
            **head,
            "probe": self.probe.to_dict(),
            "compressed": {v: r.to_dict() for v, r in self.compressed.items()},
            "summary": {
                "notes": list(self.notes),
                "recommendations_validated": self.recommendations_validated,
                "best_compression": self.best_compression,
            },
            "param_counting": dict(PARAM_COUNTING),
        }
        if c is not None:
            doc["safety_policy"] = _plain(c.policy)
        return doc

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())


# --- the aggregate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float  # sample standard deviation (n − 1); 0.0 for one value
    min: float
    max: float


@dataclass(frozen=True)
class VariantStats:
    n_seeds: int
    pass_count: int
    fail_count: int
    pass_rate: float
    verdict: str  # PASS (every seed) | FAIL (none) | MIXED
    accuracy_mean: float
    accuracy_std: float
    accuracy_min: float
    accuracy_max: float
    delta_mean: float
    delta_std: float
    delta_worst: float
    delta_best: float
    param_reduction_mean: float
    param_reduction_std: float
    param_reduction_trainable_mean: float
    rank_mean: float  # mean over seeds of each plan's mean rank over layers


@dataclass(frozen=True)
class Compliance:
    policy_compliant: bool
    meets_pass_rate: bool
    meets_worst_delta: bool
    pass_rate: float
    worst_delta: float
    policy: str = POLICY_NAME


@dataclass(frozen=True)
class ValidationLevel:
    level: str  # screening | screening_plus | certifiable
    rationale: str
    is_multiseed: bool
    n_seeds: int
    max_steps: int


@dataclass(frozen=True)
class BestCompression:
    variant: str
    param_reduction: float
    param_reduction_trainable: float
    delta_worst: float
    counted_as: str = "LoRA factor parameters"


@dataclass(frozen=True)
class Timing:
    wall_s: float  # from process start (interpreter and imports included)
    train_s: float
    eval_s: float
    overhead_s: float
    overhead_share: float
    stages_run: int
    note: str = "this invocation only; stages finished by an earlier run are read back, not timed"


@dataclass(frozen=True)
class BenchResult:
    """bench_aggregate.json: every seed's variants under the safety policy."""

    seed_runs: tuple[tuple[int, str], ...]  # (seed, status) in run order
    validation: ValidationLevel
    probe_baseline: Stats | None
    variant_results: Mapping[str, VariantStats]
    policy_compliance: Mapping[str, Compliance]
    policy: PolicySection
    best_compression: BestCompression | None
    timing: Timing | None = None
    env: Environment | None = None
    config: BenchConfig | None = None

    @property
    def n_seeds(self) -> int:
        return len(self.seed_runs)

    @property
    def n_seeds_evaluated(self) -> int:
        return sum(status == "ok" for _, status in self.seed_runs)

    @property
    def any_compliant(self) -> bool:
        return self.best_compression is not None

    def to_dict(self) -> dict[str, Any]:
        p = self.policy
        base = self.probe_baseline
        doc: dict[str, Any] = {
            "schema": AGGREGATE_SCHEMA,
            "n_seeds": self.n_seeds,
            "n_seeds_evaluated": self.n_seeds_evaluated,
            "seed_runs": [{"seed": s, "status": status} for s, status in self.seed_runs],
            "validation_classification": _plain(self.validation),
            "probe_baseline": None if base is None else {f"accuracy_{k}": v for k, v in _plain(base).items()},
            "variant_results": {k: _plain(v) for k, v in self.variant_results.items()},
            "policy_compliance": {k: _plain(v) for k, v in self.policy_compliance.items()},
            "safety_policy": {
                "name": POLICY_NAME,
                "pass_rate_min": p.pass_rate_min,
                "worst_delta_min": p.worst_delta_min,
                "tolerance": p.tolerance,
            },
            "best_compression": None if self.best_compression is None else _plain(self.best_compression),
            "any_compliant": self.any_compliant,
        }
        if self.timing is not None:
            doc["timing"] = _plain(self.timing)
        if self.env is not None:
            doc["env"] = _plain(self.env)
        if self.config is not None:
            doc["config"] = self.config.to_dict()
        return doc

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())
