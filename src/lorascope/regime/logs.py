"""One run's geometry and loss series read from a lorascope run log.

The run log's `geometry` event (one record per logged step: weight_norm, grad_norm,
cos_grad_weight, grad_to_weight_ratio, spectral_complexity, n_params, scope, loss) is read whether
or not the installed telemetry schema lists it: `telemetry.read_log` checks every line and keeps
the events its schema knows; when it skipped events and none of them reached us as `geometry`, the
log's lines are read once more for records whose event is `geometry` (the envelope checked by the
same `envelope_problem`, the torn last line left out as the reader left it out).  Values are read
with `telemetry.as_float` (null -> None, the schema's "NaN"/"Infinity" spellings -> floats).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..telemetry import SCHEMA, Event, as_float, read_log
from ..telemetry.schema import envelope_problem, from_record

GEOMETRY = "geometry"
SERIES = (
    "loss",
    "weight_norm",
    "grad_norm",
    "grad_to_weight_ratio",
    "cos_grad_weight",
    "spectral_complexity",
)


@dataclass(frozen=True)
class RunData:
    """One run: its path, id, start metadata and config, and per-step series (step, value)."""

    path: str
    run_id: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    geometry: tuple[Event, ...] = ()
    losses: tuple[tuple[int, float | None], ...] = ()  # train_step (step, loss)
    last_step: int | None = None
    torn_tail: bool = False
    finished: bool = False  # a run_end event was logged: last_step is the run's last step

    def lookup(self, dotted: str) -> Any:
        """A value by dotted key: `meta.seed` (the run_start meta), `training.lr` / `lora.r`
        (the config event), or a key of the run_start record itself; None when absent."""
        head, _, rest = dotted.partition(".")
        roots: dict[str, Any] = {"meta": self.meta, **self.config}
        node: Any = roots.get(head)
        for part in rest.split(".") if rest else ():
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    def series(self, name: str) -> list[tuple[int, float | None]]:
        """(step, value) of a geometry field, in log order; steps that are null are left out."""
        return [(e.step, as_float(e.get(name))) for e in self.geometry if e.step is not None]


def read_run_data(path: str | Path) -> RunData:
    """The last run of the log at `path` (errors are the telemetry reader's: a bad line names it)."""
    log = read_log(path)
    run_id = log.run_ids[-1] if log.events else None
    events = log.run(run_id) if run_id is not None else ()
    geometry = [e for e in events if e.event == GEOMETRY]
    if not geometry and log.n_unknown_events:
        geometry = _raw_geometry(Path(path), run_id, log.torn_tail)
        run_id = geometry[-1].run_id if geometry and run_id is None else run_id
    meta: dict[str, Any] = {}
    config: dict[str, Any] = {}
    losses = []
    for e in events:
        if e.event == "run_start" and isinstance(e.get("meta"), Mapping):
            meta = dict(e.get("meta"))
        elif e.event == "config":
            config = {k: v for k, v in e.data.items() if isinstance(v, Mapping)}
        elif e.event == "train_step" and e.step is not None:
            losses.append((e.step, as_float(e.get("loss"))))
    steps = [e.step for e in (*events, *geometry) if e.step is not None]
    return RunData(
        path=str(path),
        run_id=run_id or "",
        meta=meta,
        config=config,
        geometry=tuple(geometry),
        losses=tuple(losses),
        last_step=max(steps) if steps else None,
        torn_tail=log.torn_tail,
        finished=any(e.event == "run_end" for e in events),
    )


def _raw_geometry(path: Path, run_id: str | None, torn_tail: bool) -> list[Event]:
    """Geometry records of `run_id` (or of the last run holding any) read straight from the lines
    that `read_log` already accepted."""
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if torn_tail and lines:
        lines.pop()
    out = []
    for lineno, raw in enumerate(lines, 1):
        if b'"geometry"' not in raw:
            continue
        record = json.loads(raw)
        if envelope_problem(record, (SCHEMA,)) is None and record["event"] == GEOMETRY:
            out.append(from_record(record, lineno))
    if run_id is None and out:
        run_id = out[-1].run_id
    return [e for e in out if e.run_id == run_id]
