"""`run_study(sources, out, options)`: audit many adapters, stream results to disk, write the tables.

Steps: 1. list the jobs (sources.discover: a bad list file is refused before anything is
written); 2. open the output folder (store.Store: new, or resumed with its done sources); 3. stream
the jobs that are not done through an executor (executors.run_jobs, small adapters batched),
writing each outcome, in job order, as it arrives; 4. from the journals alone, write study.json and
study.md (tables.py, render.py) and, when pyarrow is installed, layers.parquet.  The journals and
the tables are the study; no per-adapter state is kept in memory (the job list and the set of done
sources aside).  A study that audited no adapter at all is an error (`NothingAuditedError`), and
leaves no folder behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .. import parallel
from ..errors import InvalidArgumentError, LorascopeError
from ..files import atomic_path, replacing, write_text
from . import render, tables
from .executors import EXECUTORS, run_jobs
from .failure import Failure
from .model import StudyTables
from .sources import discover
from .store import LAYERS, Store


@dataclass(frozen=True)
class StudyOptions:
    workers: int | None = None  # processes (local) or concurrent tasks (ray); None: every core
    executor: str = "local"  # "local" or "ray"
    resume: bool = False
    max_size: int | None = None  # bytes of config + weights per adapter
    hub_cache: str | None = None  # huggingface_hub cache folder (None: its default)
    # layers.parquet beside layers.csv when pyarrow is installed; its conversion's memory grows
    # with the table (pyarrow's CSV reader), unlike the rest of a study
    parquet: bool = True
    lists: tuple[str, ...] = ()  # list files of SOURCEs, read whatever they hold (--list)
    # adapters per pool / Ray task at most (None: len(jobs) / (4 × workers), and ≤ 1 MiB of
    # adapter files a batch, executors.batches); 1: one task per adapter
    batch: int | None = None
    progress: Callable[[int, int, int], None] | None = None  # (finished, total, failed) this run

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise InvalidArgumentError(
                f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise InvalidArgumentError(f"workers must be ≥ 1, got {self.workers}")
        if self.batch is not None and self.batch < 1:
            raise InvalidArgumentError(f"batch must be ≥ 1, got {self.batch}")
        if self.max_size is not None and self.max_size < 1:
            raise InvalidArgumentError(f"max size must be ≥ 1 byte, got {self.max_size}")


class NothingAuditedError(LorascopeError):
    """Every source of a study failed: there are no tables to write."""


@dataclass(frozen=True)
class StudyResult:
    out: Path
    tables: StudyTables  # study.json
    n_adapters: int
    n_failed: int
    n_skipped: int  # done before this run (--resume)
    seconds: float

    @property
    def paths(self) -> dict[str, Path]:
        names = ["adapters.jsonl", "layers.csv", "failures.jsonl", "study.json", "study.md"]
        if (self.out / "layers.parquet").exists():
            names.append("layers.parquet")
        return {n: self.out / n for n in names}


def run_study(sources: Sequence[str], out: str | Path, options: StudyOptions | None = None) -> StudyResult:
    """Audit every adapter of `sources` into `out` (module docstring); failures never stop it."""
    options = options or StudyOptions()
    if not sources and not options.lists:
        raise InvalidArgumentError("a study needs at least one SOURCE")
    out = Path(out)
    t0 = time.perf_counter()
    found = list(discover(sources, exclude=out, lists=options.lists))
    workers = options.workers or parallel.cores()
    threads = max(1, parallel.cores() // workers)  # workers × BLAS threads ≤ cores
    store = Store(out, resume=options.resume)
    skipped = len(store.done)
    jobs = [
        replace(j, max_size=options.max_size, threads=threads, hub_cache=options.hub_cache)
        for j in found
        if j.source not in store.done
    ]
    first: Failure | None = None
    try:
        batch = options.batch or max(1, len(jobs) // (4 * workers))  # ≥ 4 batches a worker: balance
        for outcome in run_jobs(jobs, workers, options.executor, batch=batch):
            store.add(outcome)
            first = first or outcome.failure
            if options.progress is not None:
                options.progress(store.n_ok + store.n_failed - skipped, len(jobs), store.n_failed)
    finally:
        store.close()
    if store.n_ok == 0:
        store.discard()
        raise _nothing_audited(sources, options.lists, store.n_failed, first)
    table = tables.build(out)
    _publish(out / "study.json", table.to_json())
    _publish(out / "study.md", render.to_markdown(table))
    if options.parquet:
        _parquet(out)
    return StudyResult(out, table, store.n_ok, store.n_failed, skipped, round(time.perf_counter() - t0, 3))


def _nothing_audited(
    sources: Sequence[str], lists: Sequence[str], n_failed: int, first: Failure | None
) -> NothingAuditedError:
    if first is None:
        where = ", ".join([*sources, *lists])
        return NothingAuditedError(
            f"no adapter found in {where}",
            hint="a SOURCE is a PEFT folder, an adapter file, a folder of them, a list, or a repo id",
        )
    detail = first.reason if first.source in first.reason else f"{first.source}: {first.reason}"
    return NothingAuditedError(
        f"no adapter could be audited: {n_failed} source(s) failed; the first ({first.kind}): {detail}",
        hint="nothing was written; fix or drop the failing sources",
    )


def _publish(path: Path, text: str) -> None:
    write_text(path, text, replace=True)  # our own table from an earlier (resumed) run of this study


def _parquet(out: Path) -> None:
    """layers.parquet from layers.csv, streamed in blocks, when pyarrow is installed."""
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return
    dest = out / "layers.parquet"
    convert = pacsv.ConvertOptions(column_types={"source": "string", "layer": "string", "dtype": "string"})
    reader = pacsv.open_csv(out / LAYERS, convert_options=convert)
    with replacing(dest), atomic_path(dest) as tmp, pq.ParquetWriter(tmp, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
