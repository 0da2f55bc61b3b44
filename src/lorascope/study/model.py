"""The study's typed results: one adapter's record (a line of adapters.jsonl) and the tables
(study.json), frozen, with `to_dict()` giving exactly the JSON the files hold.

`AdapterRecord.from_dict` reads a journal line back (resume, tables); the tables are built from
records by tables.py and rendered by render.py.  Mappings inside (module types, formats) are plain
dicts, read-only by convention: records travel between processes by pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .failure import Failure

THRESHOLDS = (0.9, 0.99)  # energy thresholds of every study; the first is the headline one
SCHEMA = "lorascope.study/v1"


def _fraction_key(t: float) -> str:
    return f"energy_fraction@{t:g}"


@dataclass(frozen=True)
class MeanMedian:
    mean: float | None
    median: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"mean": self.mean, "median": self.median}


@dataclass(frozen=True)
class MedianP90:
    median: float | None
    p90: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"median": self.median, "p90": self.p90}


@dataclass(frozen=True)
class ModuleUse:
    n_layers: int
    utilisation_mean: float | None  # over the type's live layers; None when all are dead


@dataclass(frozen=True)
class Timing:
    resolve_s: float
    audit_s: float


@dataclass(frozen=True)
class AdapterRecord:
    """One audited adapter (the fields are documented in docs/study.md, adapters.jsonl)."""

    source: str
    format: str | None
    base_model: str | None
    architecture: str
    nominal_rank: int
    nominal_ranks: tuple[int, ...]
    n_layers: int
    n_dead_layers: int
    dead: bool
    params: int
    bytes: int
    utilisation: MeanMedian
    module_types: Mapping[str, ModuleUse]
    energy_fraction: Mapping[float, MedianP90]  # threshold (THRESHOLDS) -> k@τ / r over live layers
    time: Timing | None = None
    resolved: str | None = None  # the local path of a Hub repository

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "format": self.format,
            "base_model": self.base_model,
            "architecture": self.architecture,
            "nominal_rank": self.nominal_rank,
            "nominal_ranks": list(self.nominal_ranks),
            "n_layers": self.n_layers,
            "n_dead_layers": self.n_dead_layers,
            "dead": self.dead,
            "params": self.params,
            "bytes": self.bytes,
            "utilisation": self.utilisation.to_dict(),
            "module_types": {
                k: {"n_layers": v.n_layers, "utilisation_mean": v.utilisation_mean}
                for k, v in self.module_types.items()
            },
        }
        for t, v in self.energy_fraction.items():
            d[_fraction_key(t)] = v.to_dict()
        if self.time is not None:
            d["time"] = {"resolve_s": self.time.resolve_s, "audit_s": self.time.audit_s}
        if self.resolved is not None:
            d["resolved"] = self.resolved
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterRecord:
        time = d.get("time")
        return cls(
            source=d["source"],
            format=d["format"],
            base_model=d["base_model"],
            architecture=d["architecture"],
            nominal_rank=d["nominal_rank"],
            nominal_ranks=tuple(d["nominal_ranks"]),
            n_layers=d["n_layers"],
            n_dead_layers=d["n_dead_layers"],
            dead=d["dead"],
            params=d["params"],
            bytes=d["bytes"],
            utilisation=MeanMedian(**d["utilisation"]),
            module_types={k: ModuleUse(**v) for k, v in d["module_types"].items()},
            energy_fraction={t: MedianP90(**d[_fraction_key(t)]) for t in THRESHOLDS},
            time=Timing(**time) if time is not None else None,
            resolved=d.get("resolved"),
        )


@dataclass(frozen=True)
class Stats:
    """Summary of a sample (numpy linear percentiles, population std); n = 0: nothing else."""

    n: int
    mean: float | None = None
    median: float | None = None
    std: float | None = None
    p75: float | None = None
    p90: float | None = None
    min: float | None = None
    max: float | None = None
    share_above: tuple[float, float] | None = None  # (threshold, share of values above it)

    def to_dict(self, keys: tuple[str, ...] = ("n", "mean", "median", "std", "p75", "p90", "min", "max")):
        if self.n == 0:
            return {"n": 0}
        d: dict[str, Any] = {k: getattr(self, k) for k in keys}
        if self.share_above is not None:
            d[f"share_above_{self.share_above[0]:g}"] = self.share_above[1]
        return d


@dataclass(frozen=True)
class Group:
    """Adapters sharing a value (a nominal rank, a module type, a family, a base model)."""

    name: str | int
    n: int  # adapters
    mean: float | None  # of their utilisation
    median: float | None
    layers: int | None = None  # their layers, where the table shows them


@dataclass(frozen=True)
class Estimate:
    r: float | None
    ci95: tuple[float, float] | None


@dataclass(frozen=True)
class Correlation:
    n: int
    bootstrap: int
    seed: int
    pearson: Estimate
    spearman: Estimate
    ci: float = 0.95


@dataclass(frozen=True)
class AboveOne:
    """Layers whose utilisation, or k@0.9 / r, is above 1 (LoHa / LoKr), and their adapters."""

    utilisation: int
    energy_rank: int
    adapters: int


@dataclass(frozen=True)
class Extreme:
    source: str
    utilisation: float
    nominal_rank: int
    architecture: str


@dataclass(frozen=True)
class Counts:
    sources: int
    adapters: int
    failed: int
    layers: int
    dead_layers: int
    architectures: int
    formats: Mapping[str, int]
    failure_kinds: Mapping[str, int]


@dataclass(frozen=True)
class StudyTables:
    """study.json."""

    counts: Counts
    utilisation: Stats
    by_rank: tuple[Group, ...]
    correlation: Correlation
    by_module_type: tuple[Group, ...]
    by_architecture: tuple[Group, ...]
    by_base_model: tuple[Group, ...]
    compression: Mapping[float, Stats]  # threshold -> k@τ / r medians over adapters
    layer_utilisation: Stats  # over all live layers
    layer_energy_fraction: Stats  # k@0.9 / r over all live layers
    above_one: AboveOne
    dead: tuple[str, ...]  # sources of the dead adapters
    failures: tuple[Failure, ...]  # the first FAILURES_LISTED by source
    most_utilised: tuple[Extreme, ...]
    least_utilised: tuple[Extreme, ...]
    reference: Mapping[str, Any] = field(repr=False)
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        c, cor = self.counts, self.correlation
        return {
            "schema": self.schema,
            "counts": {**c.__dict__, "formats": dict(c.formats), "failure_kinds": dict(c.failure_kinds)},
            "utilisation": self.utilisation.to_dict(),
            "by_rank": [{"rank": g.name, "n": g.n, "mean": g.mean, "median": g.median} for g in self.by_rank],
            "correlation": {
                "n": cor.n,
                "bootstrap": cor.bootstrap,
                "seed": cor.seed,
                "ci": cor.ci,
                **{k: _estimate(getattr(cor, k)) for k in ("pearson", "spearman")},
            },
            "by_module_type": {
                g.name: {"layers": g.layers, "n": g.n, "mean": g.mean, "median": g.median}
                for g in self.by_module_type
            },
            "by_architecture": _groups(self.by_architecture, "architecture"),
            "by_base_model": _groups(self.by_base_model, "base_model"),
            "compression": {
                _fraction_key(t): s.to_dict(("n", "mean", "median", "p75", "p90"))
                for t, s in self.compression.items()
            },
            "layers": {
                "utilisation": self.layer_utilisation.to_dict(),
                _fraction_key(THRESHOLDS[0]): self.layer_energy_fraction.to_dict(),
                "above_one": {
                    "utilisation": self.above_one.utilisation,
                    "energy_rank@0.9": self.above_one.energy_rank,
                    "adapters": self.above_one.adapters,
                },
            },
            "dead": {"n": len(self.dead), "sources": list(self.dead)},
            "failures": [f.to_dict() for f in self.failures],
            "most_utilised": [e.__dict__.copy() for e in self.most_utilised],
            "least_utilised": [e.__dict__.copy() for e in self.least_utilised],
            "reference": dict(self.reference),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _groups(rows: tuple[Group, ...], key: str) -> list[dict[str, Any]]:
    return [{key: g.name, "layers": g.layers, "n": g.n, "mean": g.mean, "median": g.median} for g in rows]


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"r": e.r, "ci95": list(e.ci95) if e.ci95 is not None else None}
