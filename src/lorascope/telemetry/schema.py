"""The run-log schema `lorascope.telemetry/v1`: one JSON object per line.

Envelope (every record):  schema (= SCHEMA), ts (unix seconds, float), run_id (str), event (str),
step (int or null), then the event's payload fields at top level.

Events and their payload (the full table with examples is docs/telemetry.md):

  run_start  meta{model, dataset, seed, task_profile, versions{...}, framework, ...}
  config     lora{r, alpha, use_rslora, target_modules, dropout, ...}, training{lr, weight_decay, ...}
  train_step loss, lr, grad_norm (each a number or null)
  eval       split ("eval" | "test" | "val" | "train"), metrics{loss, ppl, accuracy, ...}
  spectral   layers[{name, rank, stable_rank, energy_rank, utilisation, top1_share, sigma_max}],
             summary{n_layers, mean_stable_rank, mean_utilisation, mean_top1_share, ...}
  alert      severity (info | warning | error), code, message, context{}
  run_end    status (ok | aborted | error), reason
  geometry   weight_norm, grad_norm, grad_norm_preclip, cos_grad_weight, grad_to_weight_ratio,
             spectral_complexity, loss (numbers or null), n_params (count or null),
             scope ("lora" | "full"): the optimisation geometry of the tracked parameters at a step

Non-finite floats are written as the strings "NaN", "Infinity", "-Infinity" so every line stays
strict JSON (Gradience's `Infinity` literals broke strict parsers); `as_float` reads them back.
Forward compatibility: readers ignore unknown fields and unknown event names; a different *major*
schema id is an error.  `validate` checks the envelope and, for the events above, that the payload
fields listed in `PAYLOAD` have their kind (a loss given as a string, a step as a list, metrics that
are not an object are invalid records); `telemetry.gradience` maps Gradience's schema onto this one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "lorascope.telemetry/v1"
ENVELOPE = ("schema", "ts", "run_id", "event", "step")
SEVERITIES = ("info", "warning", "error")
END_STATUSES = ("ok", "aborted", "error")


_NONFINITE_OUT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NONFINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class Event:
    """One record.  `data` holds the payload fields (envelope removed, unknown fields kept)."""

    event: str
    run_id: str
    ts: float
    step: int | None
    data: Mapping[str, Any] = field(default_factory=dict)
    line: int = 0  # 1-based line number in the file it came from (0 when built in memory)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def to_record(self) -> dict[str, Any]:
        rec = {"schema": SCHEMA, "ts": self.ts, "run_id": self.run_id, "event": self.event, "step": self.step}
        rec.update(self.data)
        return rec


def encode_nonfinite(value: Any) -> Any:
    """Replace non-finite floats (recursively) by their string spellings."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NONFINITE_OUT[repr(value)]
    if isinstance(value, Mapping):
        return {str(k): encode_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_nonfinite(v) for v in value]
    return value


def as_float(value: Any) -> float | None:
    """A payload number as float: None stays None, "NaN"/"Infinity" strings become floats."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in _NONFINITE_IN:
        return _NONFINITE_IN[value]
    return None


# event -> {payload field: kind}; "?" marks a field that may be absent.  Kinds: "number" is a
# number, null or one of the non-finite spellings; "object", "list", "string" are what JSON calls
# them; a "?" field may also be null.
PAYLOAD: dict[str, dict[str, str]] = {
    "run_start": {"meta": "object"},
    "config": {"lora": "object", "training": "object"},
    "train_step": {"loss": "number", "lr": "number?", "grad_norm": "number?", "epoch": "number?"},
    "eval": {"split": "string", "metrics": "object"},
    "spectral": {"layers": "list", "summary": "object"},
    "alert": {"severity": "string", "code": "string", "message": "string", "context": "object?"},
    "run_end": {"status": "string", "reason": "string?"},
    # weight_norm = sqrt(sum ||p||^2), grad_norm = sqrt(sum ||g||^2) of the gradient the optimizer
    # receives (after clipping), grad_norm_preclip = the same before clipping, cos_grad_weight =
    # <g, w> / (||g|| ||w||), grad_to_weight_ratio = grad_norm / weight_norm, all over the tracked
    # parameters; spectral_complexity = mean normalised effective rank of the tracked matrices.
    # n_params is null only in logs mapped from Gradience's flat records, which do not give it.
    "geometry": {
        "weight_norm": "number",
        "grad_norm": "number",
        "grad_norm_preclip": "number?",
        "cos_grad_weight": "number",
        "grad_to_weight_ratio": "number",
        "spectral_complexity": "number?",
        "n_params": "count?",
        "scope": "string",
        "loss": "number?",
    },
}
SCOPES = ("lora", "full")  # geometry scope: the LoRA factors only, or every trainable parameter
LAYER_FIELDS = {
    "name": "string",
    "rank": "count?",
    "stable_rank": "number?",
    "utilisation": "number?",
    "top1_share": "number?",
    "sigma_max": "number?",
}
_KIND_NAMES = {
    "number": "a number or null",
    "count": "an integer ≥ 0",
    "object": "an object",
    "list": "a list",
    "string": "a string",
}


def is_number(value: Any) -> bool:
    """A payload number: int or float (not bool), null, or a non-finite spelling."""
    kind = type(value)
    if kind is float or kind is int or value is None:  # the common cases first: one line per step
        return True
    if isinstance(value, str):
        return value in _NONFINITE_IN
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: Any, kind: str) -> bool:
    if kind == "number":
        return is_number(value)
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, {"object": dict, "list": list, "string": str}[kind])


Fields = tuple[tuple[str, str, bool], ...]  # (key, kind, optional)


def _parse_fields(fields: Mapping[str, str]) -> Fields:
    return tuple((k, v.rstrip("?"), v.endswith("?")) for k, v in fields.items())


def fields_problem(record: Mapping[str, Any], fields: Mapping[str, str], what: str) -> str | None:
    """Why `record`'s fields do not have the kinds `fields` lists, or None."""
    return _fields_problem(record, _parse_fields(fields), what)


def _fields_problem(record: Mapping[str, Any], fields: Fields, what: str) -> str | None:
    for key, kind, optional in fields:
        if key not in record:
            if optional:
                continue
            return f"{what} lacks {key}"
        value = record[key]
        if value is None and optional:
            continue
        if not (is_number(value) if kind == "number" else _fits(value, kind)):
            return f"{what} {key} must be {_KIND_NAMES[kind]}, got {_kind_of(value)}"
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return "a string" if len(value) > 20 else f"the string {value!r}"
    return {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)


def envelope_problem(record: Any, schemas: tuple[str, ...] = (SCHEMA,)) -> str | None:
    """Why `record` is not a record of one of `schemas` (envelope only), or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("schema", "ts", "run_id", "event") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    schema = record["schema"]
    if not isinstance(schema, str) or schema not in schemas:
        family = isinstance(schema, str) and any(schema.split("/")[0] == s.split("/")[0] for s in schemas)
        if family:
            return f"schema {schema!r} is not supported (this lorascope reads {', '.join(schemas)})"
        return f"schema {_short(schema)} is not a telemetry schema lorascope reads ({', '.join(schemas)})"
    if not isinstance(record["run_id"], str) or not isinstance(record["event"], str):
        return "run_id and event must be strings"
    if not isinstance(record["ts"], (int, float)) or isinstance(record["ts"], bool):
        return "ts must be a number"
    step = record.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        return "step must be an integer or null"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


_PAYLOAD_FIELDS = {event: _parse_fields(fields) for event, fields in PAYLOAD.items()}
_LAYER_FIELDS = _parse_fields(LAYER_FIELDS)


def validate(record: Any) -> str | None:
    """Why `record` is not a valid v1 record (one short phrase), or None if it is.

    The envelope, then the payload of a known event: required fields present and every field of
    the table of the right kind (unknown fields are not checked).  Unknown event names are valid (a
    newer writer may add events); the reader skips them.
    """
    return envelope_problem(record) or payload_problem(record)


def payload_problem(record: dict[str, Any]) -> str | None:
    """`validate` without the envelope, for a record whose envelope was checked."""
    event = record["event"]
    fields = _PAYLOAD_FIELDS.get(event)
    if fields is None:
        return None
    problem = _fields_problem(record, fields, f"{event} event")
    if problem:
        return problem
    if event == "alert" and record["severity"] not in SEVERITIES:
        return f"alert severity {_short(record['severity'])} is not one of {', '.join(SEVERITIES)}"
    if event == "geometry" and record["scope"] not in SCOPES:
        return f"geometry scope {_short(record['scope'])} is not one of {', '.join(SCOPES)}"
    if event == "spectral":
        for i, layer in enumerate(record["layers"]):
            if not isinstance(layer, dict):
                return f"spectral layers[{i}] must be an object, got {_kind_of(layer)}"
            problem = _fields_problem(layer, _LAYER_FIELDS, f"spectral layers[{i}]")
            if problem:
                return problem
    return None


# event -> payload fields that must be present (values may be null where PAYLOAD says so).
EVENTS: dict[str, tuple[str, ...]] = {
    event: tuple(k for k, kind in fields.items() if not kind.endswith("?"))
    for event, fields in PAYLOAD.items()
}


def from_record(record: dict[str, Any], line: int = 0) -> Event:
    """Build an Event from a record that `validate` accepted."""
    data = {k: v for k, v in record.items() if k not in ENVELOPE}
    return Event(
        event=record["event"],
        run_id=record["run_id"],
        ts=float(record["ts"]),
        step=record.get("step"),
        data=data,
        line=line,
    )
