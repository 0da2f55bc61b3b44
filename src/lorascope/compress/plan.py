"""Rank planning for `compress`: from an audit report (per-layer singular values) to {layer: new rank}.

Every mode is a pure function of the spectra σ (of the scaled ΔW, descending, length r per layer).
Definitions (docs/compress.md has the long form):

  rank N          k = N for every layer
  energy τ        smallest k with Σ_{i≤k} σᵢ² ≥ τ·Σσᵢ²   (identical to PEFT `convert_to_lora(rank=float)`)
  from_audit      the audit's suggestion: "median" / "p90" (one rank) or "per-layer" (suggested_rank)
  budget_params N maximise kept energy Σ_l Σ_{i≤k_l} σ_{l,i}² subject to Σ_l k_l·(in_l+out_l) ≤ N
  budget_ratio x  budget_params with N = x · current parameters
  budget_bytes N  the same with cost k·(in+out)·itemsize(output dtype)
  sv_fro X        kohya: i = searchsorted(cumsum σ²/Σσ², X²) + 1, clamped to [1, min(m,n)−1], then k = i + 1
  sv_cumulative X kohya: i = searchsorted(cumsum σ/Σσ, X) + 1, clamped likewise, then k = i + 1
  sv_ratio X      kohya: i = #{σ > σ₁/X}, clamped likewise, then k = i + 1
The kohya modes reproduce `networks/resize_lora.py` (classic `rank_resize`, which adds 1 to the index
functions' result, so they keep one direction more than the threshold needs).

Constraints applied after every mode, in this order: round up by the rounding rule
(lorascope.rounding, the audit's rule: multiple:N, pow2 or none; default none, and for from_audit
the audit's default multiple:4), cap at `max_rank`, floor at `min_rank`, and never above the
layer's current rank (a rank is never increased).  Dead layers (ΔW = 0) get min(min_rank, r).

Budget rule: a layer's cost per kept direction is c_l = in_l + out_l (params) or c_l·itemsize
(bytes), which differs across layers.  We take directions greedily by energy per unit cost
σ²_{l,i}/c_l, largest first, in steps from one allowed rank to the next (every direction with
`none`, N with multiple:N, doubling with pow2); since σ² is non-increasing inside a layer the
greedy order always extends a prefix.  This is the exact optimum of the problem in which
the last step may be taken fractionally (the LP relaxation); the integer solution it returns keeps
at least the optimum minus one step's energy, and it is exactly optimal whenever all layers have
the same cost per rank (e.g. q/k/v/o of one width) or the budget is used up exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import jsontext
from ..errors import InvalidArgumentError
from ..rounding import EXACT, Rounding
from ..spectral import energy_k

KOHYA_MODES = ("sv_fro", "sv_cumulative", "sv_ratio")
MODES = ("rank", "energy", "from_audit", "budget_params", "budget_ratio", "budget_bytes", *KOHYA_MODES)
AUDIT_CHOICES = ("median", "p90", "per-layer")
LOCAL_MODES = ("rank", "energy", *KOHYA_MODES)  # a layer's new rank depends on its own σ only
ITEMSIZE = {"fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2}
SCHEMA = "lorascope.compress/v1"
_KOHYA_MIN_SV = 1e-6  # kohya's MIN_SV: a layer whose σ₁ is below this is "zero" and gets rank 1


@dataclass(frozen=True)
class RankMode:
    """How to choose the new ranks.  `value` is N, τ, X or "median"/"p90"/"per-layer"."""

    kind: str
    value: float | int | str
    min_rank: int = 1
    max_rank: int | None = None
    rounding: Rounding | None = None  # None: the mode's default (from_audit: multiple:4, else none)
    dtype: str | None = None  # output dtype for budget_bytes (None: each layer's own)

    def __post_init__(self) -> None:
        if self.kind not in MODES:
            raise InvalidArgumentError(f"unknown rank mode {self.kind!r}; choose from {', '.join(MODES)}")
        if self.min_rank < 1:
            raise InvalidArgumentError(f"--min-rank must be ≥ 1, got {self.min_rank}")
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise InvalidArgumentError(f"--max-rank {self.max_rank} is below --min-rank {self.min_rank}")
        _check_value(self.kind, self.value)

    @property
    def rule(self) -> Rounding:
        """The rounding rule in force: the one given, else the audit's default for from_audit (so
        `compress --from-audit p90` keeps the rank `audit` suggests) and exact for every other mode."""
        if self.rounding is not None:
            return self.rounding
        return Rounding() if self.kind == "from_audit" else EXACT


def _check_value(kind: str, v) -> None:
    if kind == "from_audit":
        if v not in AUDIT_CHOICES:
            raise InvalidArgumentError(f"--from-audit must be one of {', '.join(AUDIT_CHOICES)}, got {v!r}")
        return
    if isinstance(v, str) or not math.isfinite(float(v)):
        raise InvalidArgumentError(f"--{kind.replace('_', '-')} needs a finite number, got {v!r}")
    ok = {
        "rank": v >= 1 and float(v).is_integer(),
        "energy": 0 < v <= 1,
        "budget_params": v >= 0,
        "budget_bytes": v >= 0,
        "budget_ratio": 0 < v <= 1,
        "sv_fro": 0 < v <= 1,
        "sv_cumulative": 0 < v <= 1,
        "sv_ratio": v >= 1,
    }[kind]
    if not ok:
        rule = {
            "rank": "an integer ≥ 1",
            "energy": "in (0, 1]",
            "budget_ratio": "in (0, 1]",
            "sv_ratio": "≥ 1 (kohya: keep σ > σ₁/X)",
        }.get(kind, "in (0, 1]" if kind.startswith("sv_") else "≥ 0")
        raise InvalidArgumentError(f"--{kind.replace('_', '-')} must be {rule}, got {v}")


# --- per-layer rules: σ (r,) -> k ---------------------------------------------------------------


def kohya_k(sigma: np.ndarray, method: str, x: float, full_len: int) -> int:
    """kohya resize_lora.py: index function, clamp to [1, len(S)−1], then rank_resize's +1.

    `full_len` = min(out, in): kohya runs a dense SVD, so len(S) is the full dimension, not r; the
    σ beyond r are zero, which changes none of the cumulative sums."""
    s = sigma.astype(np.float64)
    if s.size == 0 or s[0] <= _KOHYA_MIN_SV:
        return 1
    if method == "sv_ratio":
        index = int(np.sum(s > s[0] / x))
    elif method == "sv_cumulative":
        index = int(np.searchsorted(np.cumsum(s) / s.sum(), x, side="left")) + 1
    else:  # sv_fro
        index = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), x**2, side="left")) + 1
    index = max(1, min(index, full_len - 1))
    return index + 1


def _constrain(k: int, rank: int, mode: RankMode, dead: bool) -> int:
    if dead:
        return min(mode.min_rank, rank)
    k = mode.rule.up(max(k, 1))
    if mode.max_rank is not None:
        k = min(k, mode.max_rank)
    return int(min(max(k, mode.min_rank), rank))


# --- the public entry ---------------------------------------------------------------------------


def plan_ranks(report, mode: RankMode) -> dict[str, int]:
    """{layer name: new rank} for an `AuditReport` (or anything with `.layers` of LayerReport and
    `.suggestions`).  Never returns a rank above the layer's current one."""
    layers = report.layers
    if mode.kind.startswith("budget"):
        return _budget(layers, mode)
    if mode.kind in LOCAL_MODES:
        return {lr.info.name: layer_rank(lr.sigma, lr.info, mode) for lr in layers}
    out = {}
    for lr in layers:  # from_audit
        k = lr.suggested_rank if mode.value == "per-layer" else int(report.suggestions[mode.value]["rank"])
        out[lr.info.name] = _constrain(k, lr.info.rank, mode, bool(lr.dead))
    return out


def layer_rank(sigma: np.ndarray, info, mode: RankMode) -> int:
    """New rank of one layer for a LOCAL_MODES mode, from its own spectrum σ (r,) only."""
    if mode.kind == "rank":
        k = int(mode.value)
    elif mode.kind == "energy":
        k = energy_k(sigma, float(mode.value))
    elif mode.kind in KOHYA_MODES:
        k = kohya_k(sigma, mode.kind, float(mode.value), min(info.out_features, info.in_features))
    else:
        raise InvalidArgumentError(f"mode {mode.kind} needs every layer's spectrum; use plan_ranks")
    dead = sigma.size == 0 or not sigma[0] > 0
    return _constrain(k, info.rank, mode, dead)


def _cost(info, mode: RankMode) -> int:
    per_rank = info.in_features + info.out_features
    if mode.kind == "budget_bytes":
        return per_rank * ITEMSIZE.get(mode.dtype or info.dtype, 4)
    return per_rank


def _budget(layers, mode: RankMode) -> dict[str, int]:
    """Greedy on energy per unit cost; see the module docstring for the exactness statement."""
    infos = [lr.info for lr in layers]
    if mode.kind == "budget_ratio":
        budget = float(mode.value) * sum(i.params for i in infos)
    else:
        budget = float(mode.value)
    caps = [min(i.rank, mode.max_rank) if mode.max_rank is not None else i.rank for i in infos]
    ks = [min(mode.min_rank, c) for c in caps]  # the floor is always paid
    costs = [_cost(i, mode) for i in infos]
    spent = sum(k * c for k, c in zip(ks, costs, strict=True))
    if spent > budget:
        raise InvalidArgumentError(
            f"budget {mode.value:g} is below the minimum ({spent} at --min-rank {mode.min_rank} per layer)"
        )
    # candidate steps: (energy per cost, layer, start index, end index)
    steps = []
    for li, lr in enumerate(layers):
        if lr.dead:
            continue
        s2 = lr.sigma.astype(np.float64) ** 2  # (r,)
        start = ks[li]
        # steps between consecutive allowed ranks; the first rounds the floor up to the grid
        edges, e = [], mode.rule.next_above(start)
        while e < caps[li]:
            edges.append(e)
            e = mode.rule.next_above(e)
        for a, b in zip([start, *edges], [*edges, caps[li]], strict=True):
            if b > a:
                steps.append((float(s2[a:b].sum()) / ((b - a) * costs[li]), li, a, b))
    steps.sort(key=lambda t: (-t[0], t[1], t[2]))
    closed = set()
    for _, li, a, b in steps:
        if li in closed or ks[li] != a:
            continue
        add = (b - a) * costs[li]
        if spent + add > budget:
            closed.add(li)  # later steps of this layer would skip this one: not a prefix
            continue
        ks[li], spent = b, spent + add
    return {i.name: int(k) for i, k in zip(infos, ks, strict=True)}


# --- the plan's report (compress and --dry-run) ---------------------------------------------------


@dataclass(frozen=True)
class LayerResult:
    name: str
    rank: int
    new_rank: int
    energy: float  # Σσᵢ² of the scaled ΔW
    kept: float  # Σ_{i≤k} σᵢ²
    params: int
    new_params: int
    itemsize: int
    new_itemsize: int

    @property
    def kept_energy(self) -> float:
        return 1.0 if self.energy == 0 else self.kept / self.energy

    @property
    def rel_error(self) -> float:
        """‖ΔW − ΔW′‖_F / ‖ΔW‖_F = √(Σ_{i>k} σᵢ²) / √(Σσᵢ²) (Eckart–Young)."""
        return 0.0 if self.energy == 0 else math.sqrt(max(self.energy - self.kept, 0.0) / self.energy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rank": self.rank,
            "new_rank": self.new_rank,
            "kept_energy": self.kept_energy,
            "rel_frobenius_error": self.rel_error,
            "params": self.params,
            "new_params": self.new_params,
            "bytes": self.params * self.itemsize,
            "new_bytes": self.new_params * self.new_itemsize,
        }


@dataclass(frozen=True)
class CompressReport:
    source: str | None
    output: str | None
    mode: RankMode
    layers: tuple[LayerResult, ...]
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        energy = sum(x.energy for x in self.layers)
        kept = sum(x.kept for x in self.layers)
        params = sum(x.params for x in self.layers)
        new_params = sum(x.new_params for x in self.layers)
        nbytes = sum(x.params * x.itemsize for x in self.layers)
        new_bytes = sum(x.new_params * x.new_itemsize for x in self.layers)
        return {
            "n_layers": len(self.layers),
            "n_changed": sum(x.new_rank != x.rank for x in self.layers),
            "kept_energy": 1.0 if energy == 0 else kept / energy,
            # the whole adapter as one block-diagonal ΔW: √(Σ discarded / Σ energy)
            "rel_frobenius_error": 0.0 if energy == 0 else math.sqrt(max(energy - kept, 0.0) / energy),
            "max_layer_rel_error": max((x.rel_error for x in self.layers), default=0.0),
            "params": params,
            "new_params": new_params,
            "params_reduction": 0.0 if params == 0 else 1.0 - new_params / params,
            "bytes": nbytes,
            "new_bytes": new_bytes,
            "bytes_reduction": 0.0 if nbytes == 0 else 1.0 - new_bytes / nbytes,
        }

    @property
    def plan(self) -> dict[str, int]:
        return {x.name: x.new_rank for x in self.layers}

    def to_dict(self) -> dict[str, Any]:
        m = self.mode
        return {
            "schema": SCHEMA,
            "source": self.source,
            "output": self.output,
            "mode": {
                "kind": m.kind,
                "value": m.value,
                "min_rank": m.min_rank,
                "max_rank": m.max_rank,
                "rounding": str(m.rule),
            },
            "definitions": {
                "kept_energy": "sum_{i<=k} sigma_i^2 / sum sigma_i^2 of the scaled dW",
                "rel_frobenius_error": "||dW - dW'||_F / ||dW||_F = sqrt(1 - kept_energy)",
            },
            "summary": self.summary(),
            "notes": list(self.notes),
            "layers": [x.to_dict() for x in self.layers],
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())


def layer_result(info, sigma: np.ndarray, k: int, dtype: str | None) -> LayerResult:
    """Kept energy etc. of one layer truncated to k, from its singular values σ (r,) (exact to
    ~1e-15 relative, see spectral)."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2  # (r,)
    return LayerResult(
        name=info.name,
        rank=info.rank,
        new_rank=k,
        energy=float(s2.sum()),
        kept=float(s2[:k].sum()),
        params=info.params,
        new_params=info.params_at(k),
        itemsize=ITEMSIZE.get(info.dtype, 4),
        new_itemsize=ITEMSIZE.get(dtype or info.dtype, 4),
    )
