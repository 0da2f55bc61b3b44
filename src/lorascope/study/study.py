"""`run_study(sources, out, options)`: audit many adapters, stream results to disk, write the tables.

Steps: 1. open the output folder (store.Store: new, or resumed with its done sources); 2. stream
the jobs (sources.discover) that are not done through an executor (executors.run_jobs), writing
each outcome as it arrives; 3. from the journals alone, write study.json and study.md (tables.py,
render.py) and, when pyarrow is installed, layers.parquet.  The journals and the tables are the
study; no per-adapter state is kept in memory (the set of done sources aside).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import parallel
from ..errors import InvalidArgumentError
from ..files import atomic_path, replacing, write_text
from . import render, tables
from .executors import EXECUTORS, run_jobs
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
    progress: Callable[[int, int, str], None] | None = None  # (done, failed, source)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise InvalidArgumentError(
                f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise InvalidArgumentError(f"workers must be ≥ 1, got {self.workers}")
        if self.max_size is not None and self.max_size < 1:
            raise InvalidArgumentError(f"max size must be ≥ 1 byte, got {self.max_size}")


@dataclass(frozen=True)
class StudyResult:
    out: Path
    tables: dict[str, Any]  # study.json
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
    if not sources:
        raise InvalidArgumentError("a study needs at least one SOURCE")
    out = Path(out)
    t0 = time.perf_counter()
    workers = options.workers or parallel.cores()
    threads = max(1, parallel.cores() // workers)  # workers × BLAS threads ≤ cores
    store = Store(out, resume=options.resume)
    skipped = len(store.done)
    try:
        jobs = (
            replace(j, max_size=options.max_size, threads=threads, hub_cache=options.hub_cache)
            for j in discover(sources, exclude=out)
            if j.source not in store.done
        )
        for outcome in run_jobs(jobs, workers, options.executor):
            store.add(outcome)
            if options.progress is not None:
                options.progress(store.n_ok, store.n_failed, outcome.source)
    finally:
        store.close()
    if store.n_ok + store.n_failed == 0:
        store.discard_if_empty()
        raise InvalidArgumentError(
            "no adapter found in "
            + ", ".join(sources)
            + " (a PEFT folder, a .safetensors file, a list, or a repo id)"
        )
    table = tables.build(out)
    _publish(out / "study.json", json.dumps(table, indent=2, allow_nan=False) + "\n")
    _publish(out / "study.md", render.to_markdown(table))
    if options.parquet:
        _parquet(out)
    return StudyResult(out, table, store.n_ok, store.n_failed, skipped, round(time.perf_counter() - t0, 3))


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
