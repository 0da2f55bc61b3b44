"""The typed results of `lorascope gid`: a GID report (gid.json) and a plan (plan.json).

Both are frozen dataclasses built once: by the calibration pass and the planners, or from a file a
user hands back (`from_json`, checked by `lorascope.validate`: every problem is one ConfigError,
"FILE: key layers.3.gid: must be a finite number, got 'x'").  `to_json()` gives the documented
JSON documents, field for field in the order below; optional fields that are unset (None) are left
out, except those the calibration pass always writes (`model`, `calibration.layers_per_pass`).

gid.json (schema lorascope.gid/v1):
  {"schema", "model", "definition", "rank": r used to flag starvation,
   "calibration": {"steps", "layers_per_pass", "passes", "device", "batch", "max_len", "task", "data"},
   "timing": {"pass_s", "spectra_s"},
   "memory": {"accumulator_bytes", "peak_bytes" (CUDA), "maxrss_before_mb", "maxrss_after_mb"},
   "layers": [{"name", "shape": [out, in], "gid", "gid_energy", "numerical_rank", "stable_rank",
               "energy_rank_90", "grad_norm", "importance", "starved"}]}
A report read back needs only `layers[].name, shape, gid, importance` (what plans use).

plan.json (schema lorascope.gid-plan/v1):
  {"schema", "method", "options": {"rank", "alpha", "n_max", "r_min", "r_max"},
   "params", "lora_params", "params_vs_lora",
   "layers": {NAME: {"r", "blocks", "lora_alpha", "shape", "equivalent_rank", "params", "gid", "note"}},
   "peft": {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern"} (method peft),
   "model"}
A plan read back needs only `layers.NAME.r, blocks, lora_alpha, shape` (what `apply_plan` uses).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, FormatError, InvalidArgumentError
from ..types import frozen_mapping
from ..validate import (
    boolean,
    build,
    integer,
    list_of,
    mapping_of,
    number,
    optional,
    section,
    setting,
    short,
    string,
    to_dict,
)

SCHEMA = "lorascope.gid/v1"
PLAN_SCHEMA = "lorascope.gid-plan/v1"
METHODS = ("ralora", "ralora-pro", "peft")


# --- checks of the fields a user's file may get wrong -------------------------------------------

_finite = number()


def _non_negative(v: Any) -> str | None:
    return _finite(v) or (None if v >= 0 else "must be ≥ 0")


def _shape(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(integer(1)(x) is None for x in v)
    return None if ok else "must be [out, in]: two integers ≥ 1"


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _value(v: Any) -> Any:
    if hasattr(v, "to_json"):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _value(x) for k, x in v.items()}
    return to_dict(v)


def _json(obj: Any) -> dict[str, Any]:
    """`obj`'s fields as JSON, None left out except the class's KEEP_NULL names."""
    keep = getattr(obj, "KEEP_NULL", ())
    return {
        f.name: _value(getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if getattr(obj, f.name) is not None or f.name in keep
    }


def _empty(obj: Any) -> bool:
    return all(getattr(obj, f.name) is None for f in dataclasses.fields(obj))


def _mapping(data: Any, path: str | Path | None, key: str | None = None) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"must be a JSON object, got {short(data)}", path=path, key=key)
    return data


def _check_schema(data: Any, schema: str, path: str | Path | None) -> Mapping[str, Any]:
    if not isinstance(data, Mapping) or data.get("schema") != schema:
        raise FormatError(f"not a {schema} file (its 'schema' field differs)", path=path)
    return data


# --- gid.json ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayerGid:
    """One layer's row of gid.json (metrics defined in `spectra`)."""

    name: str = setting(check=string())
    shape: tuple[int, int] = setting(check=_shape)  # (out, in)
    gid: float = setting(check=_non_negative)
    gid_energy: float | None = setting(None, optional(_non_negative))
    numerical_rank: int | None = setting(None, optional(integer(0)))
    stable_rank: float | None = setting(None, optional(_non_negative))
    energy_rank_90: int | None = setting(None, optional(integer(0)))
    grad_norm: float | None = setting(None, optional(_non_negative))
    importance: float = setting(check=_non_negative)
    starved: bool | None = setting(None, optional(boolean))

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class Calibration:
    KEEP_NULL: ClassVar[tuple[str, ...]] = ("layers_per_pass",)

    steps: int | None = setting(None, optional(integer(1)))
    layers_per_pass: int | None = setting(None, optional(integer(1)))
    passes: int | None = setting(None, optional(integer(1)))
    device: str | None = setting(None, optional(_text))
    batch: int | None = setting(None, optional(integer(1)))  # set by calibrate_model_dir
    max_len: int | None = setting(None, optional(integer(1)))
    task: str | None = setting(None, optional(_text))
    data: str | None = setting(None, optional(_text))

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class Timing:
    pass_s: float | None = setting(None, optional(_non_negative))
    spectra_s: float | None = setting(None, optional(_non_negative))

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class Memory:
    accumulator_bytes: int | None = setting(None, optional(integer(0)))
    peak_bytes: int | None = setting(None, optional(integer(0)))  # CUDA only
    maxrss_before_mb: float | None = setting(None, optional(_non_negative))  # when the caller measured it
    maxrss_after_mb: float | None = setting(None, optional(_non_negative))

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class GidReport:
    """gid.json: the calibration's per-layer GID (module docstring)."""

    KEEP_NULL: ClassVar[tuple[str, ...]] = ("model",)

    schema: str = setting(SCHEMA, string(SCHEMA))
    model: str | None = setting(None, optional(_text))
    definition: str | None = setting(None, optional(_text))
    rank: int = setting(8, integer(1))
    calibration: Calibration = section(Calibration)
    timing: Timing = section(Timing)
    memory: Memory = section(Memory)
    layers: tuple[LayerGid, ...] = setting((), list_of(lambda x: None, what="layer objects"))

    def to_json(self) -> dict[str, Any]:
        doc = _json(self)
        for name in ("calibration", "timing", "memory"):
            if _empty(getattr(self, name)):
                del doc[name]
        return doc

    @classmethod
    def from_json(cls, data: Any, path: str | Path | None = None) -> GidReport:
        """A report from its JSON document, every field checked (ConfigError naming the key)."""
        data = _check_schema(data, SCHEMA, path)
        if not data.get("layers"):
            raise ConfigError("must be a non-empty list of layer objects", path=path, key="layers")
        head = build(cls, data, path=path)
        rows = tuple(
            build(LayerGid, _mapping(x, path, f"layers.{i}"), path=path, prefix=f"layers.{i}.")
            for i, x in enumerate(data["layers"])  # as read: error messages quote the user's values
        )
        first: dict[str, int] = {}
        for i, row in enumerate(rows):  # a plan is keyed by name: a repeated one would be dropped
            if first.setdefault(row.name, i) != i:
                raise ConfigError(
                    f"repeats the name of layers.{first[row.name]}, got {short(row.name)}",
                    path=path,
                    key=f"layers.{i}.name",
                )
        return dataclasses.replace(head, layers=rows)


# --- plans ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    KEEP_NULL: ClassVar[tuple[str, ...]] = ("alpha",)

    rank: int = setting(8, integer(1))  # r (RaLoRA) or r_ref (RaLoRA-Pro, PEFT)
    alpha: float | None = setting(None, optional(number(0, open_lo=True)))  # lora_alpha at `rank`; 2·rank
    n_max: int = setting(32, integer(1))
    r_min: int = setting(1, integer(1))
    r_max: int = setting(64, integer(1))

    def check(self) -> None:
        if self.rank < 1 or self.n_max < 1 or not 1 <= self.r_min <= self.r_max:
            raise InvalidArgumentError(
                f"plan options need rank ≥ 1, n_max ≥ 1 and 1 ≤ r_min ≤ r_max (got rank={self.rank}, "
                f"n_max={self.n_max}, r_min={self.r_min}, r_max={self.r_max})"
            )

    @property
    def alpha_per_rank(self) -> float:
        return (self.alpha if self.alpha is not None else 2.0 * self.rank) / self.rank

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class PlanLayer:
    """One layer of a plan: rank r per block, n blocks, lora_alpha, and the layer's (out, in)."""

    r: int = setting(check=integer(1))
    blocks: int = setting(check=integer(1))
    lora_alpha: float = setting(check=_finite)
    shape: tuple[int, int] = setting(check=_shape)  # (out, in)
    equivalent_rank: int | None = setting(None, optional(integer(1)))  # blocks·r
    params: int | None = setting(None, optional(integer(0)))  # r·(out + in)
    gid: float | None = setting(None, optional(_non_negative))
    note: str | None = setting(None, optional(_text))

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True, kw_only=True)
class PeftPatterns:
    """The PEFT plan as `LoraConfig` arguments (ranks other than `r` in `rank_pattern`)."""

    r: int = setting(check=integer(1))
    lora_alpha: float = setting(check=_finite)
    target_modules: tuple[str, ...] = setting(check=list_of(string(), what="module names"))
    rank_pattern: Mapping[str, int] = setting(check=mapping_of(integer(1), what="ranks ≥ 1"))
    alpha_pattern: Mapping[str, float] = setting(check=mapping_of(_finite, what="finite numbers"))

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    def to_python(self) -> str:
        """A ready-to-paste `LoraConfig(...)` (valid Python; names quoted with repr)."""

        def table(items: Mapping[str, Any]) -> str:
            if not items:
                return "{}"
            return "{\n" + "".join(f"        {k!r}: {v!r},\n" for k, v in items.items()) + "    }"

        targets = "".join(f"        {t!r},\n" for t in self.target_modules)
        return (
            "from peft import LoraConfig\n\n"
            "config = LoraConfig(\n"
            f"    r={self.r!r},\n"
            f"    lora_alpha={self.lora_alpha!r},\n"
            f"    target_modules=[\n{targets}    ],\n"
            f"    rank_pattern={table(self.rank_pattern)},\n"
            f"    alpha_pattern={table(self.alpha_pattern)},\n"
            ")\n"
        )


@dataclass(frozen=True, kw_only=True)
class GidPlan:
    """plan.json: a RaLoRA, RaLoRA-Pro or PEFT plan (module docstring)."""

    KEEP_NULL: ClassVar[tuple[str, ...]] = ("model",)

    schema: str = setting(PLAN_SCHEMA, string(PLAN_SCHEMA))
    method: str | None = setting(None, optional(string(*METHODS)))
    options: PlanOptions = section(PlanOptions)
    params: int | None = setting(None, optional(integer(0)))
    lora_params: int | None = setting(None, optional(integer(0)))
    params_vs_lora: float | None = setting(None, optional(_non_negative))
    layers: Mapping[str, PlanLayer] = setting(check=mapping_of(lambda x: None, what="layer objects"))
    peft: PeftPatterns | None = setting(None, optional(mapping_of(lambda x: None)))
    model: str | None = setting(None, optional(_text))

    def to_json(self) -> dict[str, Any]:
        return _json(self)

    @classmethod
    def from_json(cls, data: Any, path: str | Path | None = None) -> GidPlan:
        """A plan from its JSON document, every field checked (ConfigError naming the key)."""
        data = _check_schema(data, PLAN_SCHEMA, path)
        if not data.get("layers") or not isinstance(data["layers"], Mapping):
            raise ConfigError("must be a non-empty object of layers", path=path, key="layers")
        head = build(cls, data, path=path)
        layers = {
            name: build(PlanLayer, _mapping(x, path, f"layers.{name}"), path=path, prefix=f"layers.{name}.")
            for name, x in data["layers"].items()
        }
        peft = None
        if head.peft is not None:
            peft = build(PeftPatterns, data["peft"], path=path, prefix="peft.")
            peft = dataclasses.replace(
                peft,
                rank_pattern=frozen_mapping(peft.rank_pattern),
                alpha_pattern=frozen_mapping(peft.alpha_pattern),
            )
        return dataclasses.replace(head, layers=frozen_mapping(layers), peft=peft)


__all__ = [
    "METHODS",
    "PLAN_SCHEMA",
    "SCHEMA",
    "Calibration",
    "GidPlan",
    "GidReport",
    "LayerGid",
    "Memory",
    "PeftPatterns",
    "PlanLayer",
    "PlanOptions",
    "Timing",
]
