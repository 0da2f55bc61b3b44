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
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import AdapterNotFoundError, FormatError, MissingDependencyError
from ..textsafe import clean

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
    from ..formats._io import write_text_atomic

    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        text = _yaml().safe_dump(plan.to_dict(), sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(plan.to_dict(), indent=2, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def load_plan(path: str | Path) -> MergePlan:
    path = Path(path)
    if not path.is_file():
        raise AdapterNotFoundError("merge plan not found", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"merge plan: not UTF-8 text (byte {e.start})", path=path) from None
    return plan_from_dict(_parse(text, path), path)


def _parse(text: str, path: Path) -> Any:
    """JSON or YAML text -> data; every way parsing can fail is one FormatError."""
    try:
        if path.suffix in (".yaml", ".yml"):
            yaml = _yaml()
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise FormatError(f"not valid YAML: {str(e).splitlines()[0]}", path=path) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"not valid JSON: {e}", path=path) from None
    except RecursionError:
        raise FormatError("merge plan: nested too deeply to read", path=path) from None
    except FormatError:
        raise
    except ValueError:  # an integer over Python's digit limit (json and yaml both call int())
        limit = sys.get_int_max_str_digits()
        raise FormatError(f"merge plan: holds an integer with more than {limit} digits", path=path) from None


def plan_from_dict(data: Any, path: str | Path | None = None) -> MergePlan:
    """Validate a parsed plan; every problem is a FormatError naming the file and the key."""

    def bad(msg: str) -> FormatError:
        return FormatError(f"merge plan: {msg}", path=path)

    if not isinstance(data, dict):
        raise bad("the top level must be a mapping")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise bad(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}")
    weights = _floats(data.get("weights"), "weights", bad)
    if weights is None:
        raise bad("'weights' is required (one number per adapter)")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise bad("'seed' must be an integer ≥ 0")
    default = _layer(data.get("default", {}), "default", bad)
    layers_raw = data.get("layers", {}) or {}
    if not isinstance(layers_raw, dict):
        raise bad("'layers' must map layer names to settings")
    layers = {str(k): _layer(v, f"layers.{clean(k)}", bad) for k, v in layers_raw.items()}
    for name, lp in [("default", default), *layers.items()]:
        if lp.weights is not None and len(lp.weights) != len(weights):
            raise bad(f"{name}: {len(lp.weights)} weights for {len(weights)} adapters")
    adapters = _strings(data.get("adapters"), "adapters", bad)
    notes = _strings(data.get("notes"), "notes", bad)
    peft = data.get("peft_add_weighted_adapter", {}) or {}
    if not isinstance(peft, dict):
        raise bad("'peft_add_weighted_adapter' must be a mapping")
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
        raise bad(f"'fingerprints' must be a list of {n} mappings with keys {', '.join(KEYS)}")
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
        raise bad(f"'{where}' must be a list of strings")
    return tuple(raw)


def _layer(raw: Any, where: str, bad) -> LayerPlan:
    if not isinstance(raw, dict):
        raise bad(f"{where} must be a mapping")
    unknown = set(raw) - _LAYER_KEYS
    if unknown:
        raise bad(f"{where}: unknown key(s) {sorted(unknown)}")
    from .methods import METHODS

    method = raw.get("method", "linear")
    if not isinstance(method, str) or method not in METHODS:
        raise bad(f"{where}.method {method!r} is not one of {', '.join(METHODS)}")
    unused = sorted(set(raw) - method_keys(method))
    if unused:
        raise bad(f"{where}: {', '.join(unused)} does not apply to method {method} ({_users(unused[0])})")
    if raw.get("rank") is not None and raw.get("energy") is not None:
        raise bad(f"{where}: give rank or energy, not both")
    density = _number(raw.get("density"), f"{where}.density", bad, 0.0, 1.0, open_low=True)
    energy = _number(raw.get("energy"), f"{where}.energy", bad, 0.0, 1.0, open_low=True)
    rank = raw.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise bad(f"{where}.rank must be a positive integer")
    majority = raw.get("majority", "total")
    if majority not in ("total", "frequency"):
        raise bad(f"{where}.majority must be 'total' or 'frequency'")
    first = raw.get("compress_first", {}) or {}
    if not isinstance(first, dict) or not all(
        str(i).isdigit() and isinstance(k, int) and not isinstance(k, bool) and k >= 1
        for i, k in first.items()
    ):
        raise bad(f"{where}.compress_first must map adapter indices to positive ranks")
    return LayerPlan(
        method,
        _floats(raw.get("weights"), f"{where}.weights", bad),
        density,
        rank,
        energy,
        majority,
        {int(i): int(k) for i, k in first.items()},
    )


def _floats(raw: Any, where: str, bad) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise bad(f"{where} must be a non-empty list of numbers")
    out = []
    for x in raw:
        value = _finite(x)
        if value is None:
            raise bad(f"{where} must hold finite numbers, got {_short(x)}")
        out.append(value)
    return tuple(out)


def _finite(x: Any) -> float | None:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return None
    try:
        value = float(x)
    except OverflowError:  # an integer beyond float range
        return None
    return value if math.isfinite(value) else None


def _short(x: Any, limit: int = 40) -> str:
    text = (
        repr(x) if not isinstance(x, int) or x.bit_length() < 128 else f"an integer of {x.bit_length()} bits"
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(raw: Any, where: str, bad, lo: float, hi: float, open_low: bool = False) -> float | None:
    if raw is None:
        return None
    if not isinstance(raw, (int, float)) or isinstance(raw, bool):
        raise bad(f"{where} must be a number")
    if not (lo < raw <= hi if open_low else lo <= raw <= hi):
        raise bad(f"{where} must be in {'(' if open_low else '['}{lo:g}, {hi:g}], got {raw}")
    return float(raw)


def _yaml():
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError(
            "YAML plans need PyYAML: pip install pyyaml (or use a .json plan)"
        ) from None
    return yaml
