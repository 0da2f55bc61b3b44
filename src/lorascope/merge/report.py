"""What `merge_files` reports: one `MergedLayer` per output layer and the whole `MergeReport`
(schema lorascope.merge/v1).  Plain frozen values; computing them is execute.py's job.

The post-merge check, one rule: a layer fails when its `rel_error` exceeds the tolerance that
applies to it.  A tolerance the user set (`max_error`) applies to every layer.  Without one, the
default `MAX_ERROR` applies to the methods that can write their result exactly (`linear`, and `svd`,
whose only loss is the truncation the plan chose); the dense methods (ties, dare_ties,
dare_linear, magnitude_prune) sparsify ΔW, which makes it full-rank, so re-factorising it at a LoRA
rank loses part of it by definition: that loss is reported (`lossy_by_method`), not failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import jsontext
from .checks import MAX_ERROR
from .methods import get_method

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
    max_error: float | None = None  # the tolerance the user set; None: the default rule (module docstring)

    def tolerance(self, layer: MergedLayer) -> float | None:
        """The largest rel_error `layer` may have; None: its loss is reported, not checked."""
        if self.max_error is not None:
            return self.max_error
        return None if get_method(layer.method).kind == "dense" else MAX_ERROR

    @property
    def over_max_error(self) -> tuple[str, ...]:
        """Layers that lost more than their tolerance of the update their method intended."""
        return tuple(
            x.name for x in self.layers if (t := self.tolerance(x)) is not None and not x.rel_error <= t
        )

    @property
    def lossy_by_method(self) -> tuple[MergedLayer, ...]:
        """Layers whose loss is the method's own (dense methods, no tolerance set): reported."""
        return tuple(x for x in self.layers if self.tolerance(x) is None)

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
            "default_max_error": MAX_ERROR,
            "over_max_error": list(self.over_max_error),
            "lossy_by_method": _lossy_summary(self.lossy_by_method),
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


def _lossy_summary(layers: tuple[MergedLayer, ...]) -> dict[str, Any] | None:
    """The loss the dense methods report instead of failing (None when no layer is one)."""
    if not layers:
        return None
    errs = [x.rel_error for x in layers]
    return {
        "n_layers": len(layers),
        "methods": sorted({x.method for x in layers}),
        "max_rel_error": max(errs),
        "mean_rel_error": float(np.mean(errs)),
        "checked": False,
    }
