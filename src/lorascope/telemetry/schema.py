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

Non-finite floats are written as the strings "NaN", "Infinity", "-Infinity" so every line stays
strict JSON (Gradience's `Infinity` literals broke strict parsers); `as_float` reads them back.
Forward compatibility: readers ignore unknown fields and unknown event names; a different *major*
schema id is an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "lorascope.telemetry/v1"
SCHEMA_FAMILY = "lorascope.telemetry/"
ENVELOPE = ("schema", "ts", "run_id", "event", "step")
SEVERITIES = ("info", "warning", "error")
END_STATUSES = ("ok", "aborted", "error")

# event -> payload fields that must be present (values may be null where the table says so).
EVENTS: dict[str, tuple[str, ...]] = {
    "run_start": ("meta",),
    "config": ("lora", "training"),
    "train_step": ("loss",),
    "eval": ("split", "metrics"),
    "spectral": ("layers", "summary"),
    "alert": ("severity", "code", "message"),
    "run_end": ("status",),
}

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


def validate(record: Any) -> str | None:
    """Why `record` is not a valid v1 record (one short phrase), or None if it is.

    Unknown event names are valid (a newer writer may add events); the reader skips them.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in ("schema", "ts", "run_id", "event") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    schema = record["schema"]
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_FAMILY):
        return f"schema {schema!r} is not a lorascope telemetry schema"
    if schema != SCHEMA:
        return f"schema {schema!r} is not supported (this lorascope reads {SCHEMA})"
    if not isinstance(record["run_id"], str) or not isinstance(record["event"], str):
        return "run_id and event must be strings"
    if not isinstance(record["ts"], (int, float)) or isinstance(record["ts"], bool):
        return "ts must be a number"
    step = record.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        return "step must be an integer or null"
    required = EVENTS.get(record["event"])
    if required:
        lacking = [k for k in required if k not in record]
        if lacking:
            return f"{record['event']} event lacks {', '.join(lacking)}"
    if record["event"] == "alert" and record["severity"] not in SEVERITIES:
        return f"alert severity {record['severity']!r} is not one of {', '.join(SEVERITIES)}"
    return None


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
