"""What `merge_files` reports: one `MergedLayer` per output layer and the whole `MergeReport`
(schema lorascope.merge/v1).  Plain frozen values; computing them is execute.py's job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import jsontext

SCHEMA = "lorascope.merge/v1"


@dataclass(frozen=True)
class MergedLayer:
    name: str
    method: str
    inputs: tuple[int, ...]  # indices of the adapters that have this layer
    ranks: tuple[int, ...]
    rank: int  # written rank
    weights: tuple[float, ...]
    params: dict[str, Any]
    rel_error: float  # written vs intended merged ΔW
    intended_norm: float
    compress_first: dict[int, int] = field(default_factory=dict)
    scale: float = 1.0  # the written layer's scale (linear merges fold c = |w₁s₁| out of the factors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "inputs": list(self.inputs),
            "ranks": list(self.ranks),
            "rank": self.rank,
            "weights": list(self.weights),
            "params": self.params,
            "rel_error": self.rel_error,
            "intended_norm": self.intended_norm,
            "compress_first": {str(k): v for k, v in self.compress_first.items()},
            "scale": self.scale,
        }


@dataclass(frozen=True)
class MergeReport:
    sources: tuple[str | None, ...]
    output: str | None
    layers: tuple[MergedLayer, ...]
    notes: tuple[str, ...] = ()
    verified: bool = False  # the written file was read back and matched the computed factors
    max_error: float | None = None  # layers whose rel_error exceeds this are flagged; None: not checked

    @property
    def over_max_error(self) -> tuple[str, ...]:
        """Layers that lost more than `max_error` of the update their method intended."""
        if self.max_error is None:
            return ()
        return tuple(x.name for x in self.layers if not x.rel_error <= self.max_error)

    def summary(self) -> dict[str, Any]:
        errs = [x.rel_error for x in self.layers]
        methods: dict[str, int] = {}
        for x in self.layers:
            methods[x.method] = methods.get(x.method, 0) + 1
        return {
            "n_layers": len(self.layers),
            "methods": methods,
            "max_rel_error": max(errs, default=0.0),
            "mean_rel_error": float(np.mean(errs)) if errs else 0.0,
            "ranks": sorted({x.rank for x in self.layers}),
            "verified": self.verified,
            "max_error": self.max_error,
            "over_max_error": list(self.over_max_error),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "sources": list(self.sources),
            "output": self.output,
            "summary": self.summary(),
            "notes": list(self.notes),
            "layers": [x.to_dict() for x in self.layers],
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())
