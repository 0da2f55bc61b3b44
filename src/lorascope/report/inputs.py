"""Which section an input becomes, decided from the path alone or the JSON's `schema` field.

* a `.json` file: its `schema` (`lorascope.audit/v1` → audit, …, `lorascope.gid-trial/v1` → the
  fair test's summary), else its file name (`gid.json`, `bench.json`, `study.json`, `regime.json`;
  not `summary.json`, too common a name to mark a kind); anything else is refused with the schemas
  that are read;
* a `.jsonl` file: a run log, unless its name marks another kind (`adapters.jsonl`: a study);
* a directory holding a kind's marker file (`bench.json`, `bench_aggregate.json`, also one level
  down for per-seed folders, or `bench_config.json` of a bench no seed of which has finished;
  `study.json`, `adapters.jsonl`): that kind;
* anything else: an adapter, audited on the fly (errors are the audit's own, with a hint that
  lists what report takes instead of audit's `--format`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import FormatError
from ..files import read_text
from .base import SectionKind

# the hint of every error about what an input is (report has no --format: the kind is decided here)
REPORT_HINT = (
    "report takes adapters, audit and merge-audit JSON, run logs (.jsonl), bench and study folders, "
    "gid.json, regime.json, and the fair test's summary.json (schema lorascope.gid-trial/v1)"
)


def finite_float(text: str) -> float:
    """json's parse_float that refuses numbers too large for a float (1e999 would be infinity,
    which strict JSON, and so the page's embedded copy, cannot hold)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def read_json(path: str) -> Any:
    """Strict JSON (no NaN/Infinity: the page embeds it), one-line errors naming the file.  Stricter
    than `files.read_json`, which reads lorascope's own outputs: only the parse is done here."""
    text = read_text(path, "JSON file")

    def refuse(name: str) -> None:
        raise FormatError(f"not strict JSON ({name} is not a JSON number)", path=path)

    try:
        return json.loads(text, parse_constant=refuse, parse_float=finite_float)
    except FormatError:
        raise
    except json.JSONDecodeError as e:
        raise FormatError(
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path=path
        ) from None
    except RecursionError:
        raise FormatError("not valid JSON (nested too deeply to read)", path=path) from None
    except ValueError as e:
        if "too large" in str(e):  # finite_float
            raise FormatError(f"not strict JSON ({e})", path=path) from None
        raise FormatError(
            f"not valid JSON (an integer with more than {sys.get_int_max_str_digits()} digits)", path=path
        ) from None


def _marked(directory: Path, kinds: dict[str, SectionKind]) -> SectionKind | None:
    for kind in kinds.values():
        for name in kind.files:  # a name with a "*/" reaches one level down
            if any(f.is_file() for f in directory.glob(name)):
                return kind
    return None


def doc_in(path: str, doc: Any, name: str) -> Any:
    """The JSON document of an input: the file's own (`doc`), or NAME inside the directory."""
    return doc if doc is not None else read_json(str(Path(path) / name))


def classify(path: str, kinds: dict[str, SectionKind]) -> tuple[SectionKind, Any]:
    """(section kind, parsed JSON or None) for one input."""
    p = Path(path)
    name = p.name
    if p.suffix == ".json" and name != "adapter_config.json":
        doc = read_json(path)
        schema = doc.get("schema") if isinstance(doc, dict) else None
        for kind in kinds.values():
            if isinstance(schema, str) and any(schema.split("/v")[0] == s for s in kind.schemas):
                return kind, doc
        for kind in kinds.values():
            if name in kind.files:  # no schema field: the file name decides
                return kind, doc
        known = ", ".join(s + "/v1" for k in kinds.values() for s in k.schemas)
        got = f"schema {schema!r}" if isinstance(schema, str) else "no schema field"
        raise FormatError(
            f"not a report lorascope reads ({got}; expected one of {known})", path=path, hint=REPORT_HINT
        )
    if p.suffix == ".jsonl":
        marked = next((k for k in kinds.values() if name in k.files), None)
        return (marked or kinds["run"]), None
    if p.is_dir():
        marked = _marked(p, {k: v for k, v in kinds.items() if v.files})
        if marked is not None:
            return marked, None
    return kinds["audit"], None
