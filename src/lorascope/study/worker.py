"""One job, in a worker: resolve the source, audit it, reduce the report to one record and rows.

`audit_one(job)` never raises for a bad adapter: every error becomes a failure with a kind (too
large, not found, not cached, download failed, unknown format, no LoRA layers, unsupported,
unreadable, out of memory, internal error) and a one-line reason.  The same function runs in a
process pool and as a Ray task, so both executors give identical records (the BLAS thread count is
part of the job).

The record (one line of adapters.jsonl) holds what the tables need: nominal rank (the most common
layer rank; ties go to the larger), the distinct ranks, layers, parameters, per module type the
layer count and mean utilisation of live layers, the utilisation mean / median over live layers,
the energy-rank fractions k@τ / r (median, p90 over live layers, numpy linear percentiles), dead
layers, the architecture family (from layer names) and times.  Rows (layers.csv) are one per layer.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..audit import AuditOptions, AuditReport, audit_adapter
from ..metrics import energy_key, median, percentile
from ..order import natural_key
from ..textsafe import clean
from .arch import architecture
from .failure import Failure, StudyFailure, failure
from .hub import resolve_repo
from .model import THRESHOLDS, AdapterRecord, MeanMedian, MedianP90, ModuleUse, Timing
from .sources import Job, adapter_bytes

LAYER_COLUMNS = (
    "source", "layer", "module_type", "kind", "rank", "out_features", "in_features", "params",
    "scale", "dtype", "dead", "sigma_max", "frobenius", "stable_rank", "effective_rank",
    "utilisation", "numerical_rank", *map(energy_key, THRESHOLDS),
)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    source: str
    record: AdapterRecord | None = None  # adapters.jsonl line, when audited
    rows: tuple[tuple[Any, ...], ...] = field(default=(), repr=False)  # layers.csv rows
    failure: Failure | None = None  # failures.jsonl line, when not


def audit_one(job: Job) -> Outcome:
    """Audit one job (module docstring); never raises for a bad input."""
    before = os.environ.get("LORASCOPE_THREADS")
    os.environ["LORASCOPE_THREADS"] = str(job.threads)  # read per call by lorascope.parallel
    t0 = time.perf_counter()
    try:
        path, nbytes = _resolve(job)
        t1 = time.perf_counter()
        report = audit_adapter(path, AuditOptions(thresholds=THRESHOLDS))
        t2 = time.perf_counter()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001  (any failure is recorded, never fatal)
        return Outcome(job.source, failure=failure(job.source, e))
    finally:
        if before is None:
            os.environ.pop("LORASCOPE_THREADS", None)
        else:
            os.environ["LORASCOPE_THREADS"] = before
    record, rows = reduce_report(job.source, report, nbytes)
    record = replace(
        record,
        time=Timing(resolve_s=round(t1 - t0, 6), audit_s=round(t2 - t1, 6)),
        resolved=str(path) if job.repo_id is not None else None,
    )
    return Outcome(job.source, record, rows)


def _resolve(job: Job) -> tuple[Path, int]:
    """(local path, bytes read) of the job's adapter; too large or missing is a StudyFailure."""
    if job.repo_id is not None:
        path = resolve_repo(job.repo_id, job.revision, job.max_size, job.hub_cache)
    else:
        path = Path(job.source)
        if not (path.exists() or path.is_symlink()):
            raise StudyFailure("not found", "no such file or directory", path=job.source)
    nbytes = adapter_bytes(path)
    if job.max_size is not None and nbytes > job.max_size:
        raise StudyFailure("too large", f"{nbytes} bytes > --max-size {job.max_size}", path=job.source)
    return path, nbytes


def reduce_report(source: str, report: AuditReport, nbytes: int) -> tuple[AdapterRecord, tuple[tuple, ...]]:
    """The adapters.jsonl record and the layers.csv rows of one AuditReport."""
    k90, k99 = map(energy_key, THRESHOLDS)
    rows: list[tuple[Any, ...]] = []
    util: list[float] = []
    types: dict[str, list[Any]] = {}  # module type -> [n layers, live utilisations]
    fractions: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    for x in report.layers:
        i, m, kind = x.info, x.metrics, x.module_type
        rows.append(
            (source, i.name, kind, i.kind, i.rank, i.out_features, i.in_features, i.params, i.scale,
             i.dtype, x.dead, m["sigma_max"], m["frobenius"], m["stable_rank"], m["effective_rank"],
             m["utilisation"], int(m["numerical_rank"]), int(m[k90]), int(m[k99]))
        )  # fmt: skip
        slot = types.setdefault(kind, [0, []])
        slot[0] += 1
        if not x.dead:
            util.append(m["utilisation"])
            slot[1].append(m["utilisation"])
            for t, key in zip(THRESHOLDS, (k90, k99), strict=True):
                fractions[t].append(m[key] / i.rank)
    rows.sort(key=lambda row: natural_key(row[1]))  # layers in natural order (layers.2 before .10)
    ranks = Counter(x.info.rank for x in report.layers)
    record = AdapterRecord(
        source=source,
        format=report.source.get("format"),
        base_model=_base_model(report.source),
        architecture=architecture([x.name for x in report.layers]),
        nominal_rank=max(ranks, key=lambda r: (ranks[r], r)),
        nominal_ranks=tuple(sorted(ranks)),
        n_layers=len(report.layers),
        n_dead_layers=len(report.layers) - len(util),
        dead=not util,
        params=int(sum(x.info.params for x in report.layers)),
        bytes=nbytes,
        utilisation=MeanMedian(_mean(util), median(util) if util else None),
        module_types={k: ModuleUse(n, _mean(v)) for k, (n, v) in types.items()},
        energy_fraction={
            t: MedianP90(median(f), percentile(f, 90)) if f else MedianP90(None, None)
            for t, f in fractions.items()
        },
    )
    return record, tuple(rows)


def _base_model(source: dict[str, Any]) -> str | None:
    value = source.get("base_model_name_or_path")
    if not isinstance(value, str) or not value:
        meta = source.get("metadata") or {}
        value = meta.get("ss_sd_model_name") or meta.get("base_model") or None
    return clean(value)[:200] if isinstance(value, str) else None


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None
