"""Training telemetry: the run-log schema, its writer and reader (no torch); Gradience's run logs
are read too (`gradience`).

The Hugging Face callback that writes these logs while training is `lorascope.integrations.hf`
(also `lorascope.LorascopeCallback`): it sits above telemetry and monitor and imports both.
"""

from __future__ import annotations

from .gradience import GRADIENCE_SCHEMA
from .reader import RunLog, parse_lines, read_log, read_run, scan_log
from .schema import EVENTS, SCHEMA, Event, as_float
from .writer import MAX_STR_LEN, RunWriter, redact

__all__ = [
    "EVENTS",
    "GRADIENCE_SCHEMA",
    "MAX_STR_LEN",
    "SCHEMA",
    "Event",
    "RunLog",
    "RunWriter",
    "as_float",
    "parse_lines",
    "read_log",
    "read_run",
    "redact",
    "scan_log",
]
