"""The merge plan: what `merge` executes, written by `merge-audit --plan` or by hand.

File format (JSON, or YAML when the name ends in .yaml/.yml and PyYAML is installed), schema
`lorascope.merge_plan/v1`:

    schema: lorascope.merge_plan/v1
    adapters: [path_a, path_b, ...]      # informational; `merge` takes the adapters on its command line
    weights: [1.0, 1.0]                  # ΔW = Σ wᵢ·ΔWᵢ before method-specific steps
    seed: 0                              # DARE's random drops
    default: {method: linear}            # for layers not listed below
    layers:
      model.layers.0.self_attn.q_proj: {method: ties, density: 0.7, rank: 64, weights: [1.0, 0.5],
                                        compress_first: {0: 12}}

Per-layer keys: method (see lorascope.merge.methods.METHODS), weights (replace the global ones),
density (kept share for ties / dare_* / magnitude_prune), rank or energy (target of the
re-factorisation), majority ("total" | "frequency"), compress_first (adapter index → rank: that
adapter's layer is truncated to this rank before merging).  Unknown keys are errors, never ignored.
`fingerprints` (one per adapter, merge/fingerprint.py): what the plan was computed from; `merge`
refuses the plan for other adapters or another order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import YAML_SUFFIXES, read_mapping, write_text, yaml_module
from ..textsafe import clean
from ..validate import integer, number, optional, short

SCHEMA = "lorascope.merge_plan/v1"
_LAYER_KEYS = {"method", "weights", "density", "rank", "energy", "majority", "compress_first"}
_TOP_KEYS = {
    "schema",
    "adapters",
    "weights",
    "seed",
    "default",
    "layers",
    "peft_add_weighted_adapter",
    "notes",
    "fingerprints",
}


@dataclass(frozen=True)
class LayerPlan:
    method: str = "linear"
    weights: tuple[float, ...] | None = None  # None: the plan's global weights
    density: float | None = None
    rank: int | None = None
    energy: float | None = None
    majority: str = "total"
    compress_first: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.weights is not None:
            out["weights"] = [round(w, 6) for w in self.weights]
        for key in ("density", "rank", "energy"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 6) if isinstance(value, float) else value
        if self.majority != "total":
            out["majority"] = self.majority
        if self.compress_first:
            out["compress_first"] = {str(i): k for i, k in sorted(self.compress_first.items())}
        return out


@dataclass(frozen=True)
class MergePlan:
    weights: tuple[float, ...]
    default: LayerPlan = field(default_factory=LayerPlan)
    layers: dict[str, LayerPlan] = field(default_factory=dict)
    adapters: tuple[str, ...] = ()
    seed: int = 0
    peft: dict[str, Any] = field(default_factory=dict)  # equivalent add_weighted_adapter call
    notes: tuple[str, ...] = ()
    fingerprints: tuple[dict[str, Any], ...] = ()  # of the adapters, in order (merge/fingerprint.py)

    def for_layer(self, name: str) -> LayerPlan:
        """The layer's plan, with the plan's weights when it has none of its own."""
        lp = self.layers.get(name, self.default)
        return lp if lp.weights is not None else replace(lp, weights=self.weights)

    def layer_weights(self, name: str) -> tuple[float, ...]:
        """One weight per adapter for this layer: its own, else the plan's."""
        weights = self.layers.get(name, self.default).weights
        return self.weights if weights is None else weights

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "adapters": list(self.adapters),
            "weights": list(self.weights),
            "seed": self.seed,
            "default": self.default.to_dict(),
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
        }
        if self.peft:
            out["peft_add_weighted_adapter"] = self.peft
        if self.notes:
            out["notes"] = list(self.notes)
        if self.fingerprints:
            out["fingerprints"] = [dict(x) for x in self.fingerprints]
        return out


def save_plan(plan: MergePlan, path: str | Path) -> None:
    path = Path(path)
    if path.suffix in YAML_SUFFIXES:
        text = yaml_module().safe_dump(plan.to_dict(), sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(plan.to_dict(), indent=2, allow_nan=False) + "\n"
    write_text(path, text)


def load_plan(path: str | Path) -> MergePlan:
    return plan_from_dict(read_mapping(path, "merge plan"), path)


def plan_from_dict(data: Any, path: str | Path | None = None) -> MergePlan:
    """Validate a parsed plan; every problem is one ConfigError naming the file and the key."""

    def bad(key: str | None, problem: str) -> ConfigError:
        return ConfigError(problem, path=path, key=key)

    if not isinstance(data, dict):
        raise bad(None, "the top level must be a mapping")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise bad("schema", f"is {short(data.get('schema'))}, expected {SCHEMA!r}")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise bad(unknown[0], f"unknown key; known keys: {', '.join(sorted(_TOP_KEYS))}")
    weights = _floats(data.get("weights"), "weights", bad)
    if weights is None:
        raise bad("weights", "is required (one number per adapter)")
    seed = data.get("seed", 0)
    if integer(0)(seed):
        raise bad("seed", f"must be an integer ≥ 0, got {short(seed)}")
    default = _layer(data.get("default", {}), "default", bad)
    layers_raw = data.get("layers", {}) or {}
    if not isinstance(layers_raw, dict):
        raise bad("layers", "must map layer names to settings")
    layers = {str(k): _layer(v, f"layers.{clean(k)}", bad) for k, v in layers_raw.items()}
    for name, lp in [("default", default), *layers.items()]:
        if lp.weights is not None and len(lp.weights) != len(weights):
            raise bad(f"{name}.weights", f"{len(lp.weights)} weights for {len(weights)} adapters")
    adapters = _strings(data.get("adapters"), "adapters", bad)
    notes = _strings(data.get("notes"), "notes", bad)
    peft = data.get("peft_add_weighted_adapter", {}) or {}
    if not isinstance(peft, dict):
        raise bad("peft_add_weighted_adapter", "must be a mapping")
    prints = _fingerprints(data.get("fingerprints"), len(weights), bad)
    return MergePlan(weights, default, layers, adapters, seed, dict(peft), notes, prints)


def _fingerprints(raw: Any, n: int, bad) -> tuple[dict[str, Any], ...]:
    """One mapping per adapter with the keys of merge/fingerprint.py (strings, integers or null)."""
    from .fingerprint import KEYS

    if raw is None:
        return ()
    ok = isinstance(raw, list) and len(raw) == n
    ok = ok and all(isinstance(x, dict) and set(x) <= set(KEYS) for x in raw)
    ok = ok and all(v is None or isinstance(v, str) or type(v) is int for x in raw for v in x.values())
    if not ok:
        raise bad("fingerprints", f"must be a list of {n} mappings with keys {', '.join(KEYS)}")
    return tuple(dict(x) for x in raw)


def method_keys(method: str) -> frozenset[str]:
    """The per-layer keys `method` reads.  Any other key would be ignored, so plans and `merge`'s
    flags that give one are refused: rank/energy re-factorise (svd and the dense methods), density
    and majority are parameters of the methods that take them."""
    from .methods import METHODS

    m = METHODS[method]
    keys = {"method", "weights", "compress_first"}
    if m.kind == "dense" or "rank" in m.params:
        keys |= {"rank", "energy"}
    keys |= {k for k in ("density", "majority") if k in m.params}
    return frozenset(keys)


def uses_seed(method: str) -> bool:
    """DARE's random drops and the dense methods' randomized SVD draw from the seed."""
    from .methods import METHODS

    return METHODS[method].needs_rng or METHODS[method].kind == "dense"


def _users(key: str) -> str:
    from .methods import METHODS

    return f"{key} is read by " + ", ".join(name for name in METHODS if key in method_keys(name))


def _strings(raw: Any, where: str, bad) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise bad(where, "must be a list of strings")
    return tuple(raw)


def _layer(raw: Any, where: str, bad) -> LayerPlan:
    if not isinstance(raw, dict):
        raise bad(where, "must be a mapping")
    unknown = sorted(set(map(str, raw)) - _LAYER_KEYS)
    if unknown:
        raise bad(f"{where}.{unknown[0]}", f"unknown key; known keys: {', '.join(sorted(_LAYER_KEYS))}")
    from .methods import METHODS

    method = raw.get("method", "linear")
    if not isinstance(method, str) or method not in METHODS:
        raise bad(f"{where}.method", f"{short(method)} is not one of {', '.join(METHODS)}")
    unused = sorted(set(raw) - method_keys(method))
    if unused:
        raise bad(where, f"{', '.join(unused)} does not apply to method {method} ({_users(unused[0])})")
    if raw.get("rank") is not None and raw.get("energy") is not None:
        raise bad(where, "give rank or energy, not both")
    density = _number(raw.get("density"), f"{where}.density", bad)
    energy = _number(raw.get("energy"), f"{where}.energy", bad)
    rank = raw.get("rank")
    if optional(integer(1))(rank):
        raise bad(f"{where}.rank", f"must be a positive integer, got {short(rank)}")
    majority = raw.get("majority", "total")
    if majority not in ("total", "frequency"):
        raise bad(f"{where}.majority", f"must be 'total' or 'frequency', got {short(majority)}")
    first = raw.get("compress_first", {}) or {}
    if not isinstance(first, dict) or not all(
        str(i).isdigit() and not integer(1)(k) for i, k in first.items()
    ):
        raise bad(f"{where}.compress_first", "must map adapter indices to positive ranks")
    return LayerPlan(
        method=method,
        weights=_floats(raw.get("weights"), f"{where}.weights", bad),
        density=density,
        rank=rank,
        energy=energy,
        majority=majority,
        compress_first={int(i): int(k) for i, k in first.items()},
    )


def _floats(raw: Any, where: str, bad) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise bad(where, "must be a non-empty list of numbers")
    for x in raw:
        if number()(x):
            raise bad(where, f"must hold finite numbers, got {short(x, 40)}")
    return tuple(float(x) for x in raw)


def _number(raw: Any, where: str, bad) -> float | None:
    """A share in (0, 1] (density, energy), or None."""
    problem = optional(number(0.0, 1.0, open_lo=True))(raw)
    if problem:
        raise bad(where, f"{problem}, got {short(raw)}")
    return None if raw is None else float(raw)
