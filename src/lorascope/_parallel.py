"""`ordered_map`: run a per-layer function on two worker threads, results in input order.

Each worker runs its calls on one BLAS thread (spectral.one_blas_thread): numpy releases the GIL in
file reads, dtype widening, BLAS and LAPACK, so two workers keep both cores busy through phases
that are single-threaded inside one layer (eigensolves, small products, reads).  At most `ahead`
items are in flight, so memory stays bounded by a few layers.  One worker, or fewer than `ahead`
items: a plain loop on the calling thread (the caller's own thread settings apply).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from .spectral import one_blas_thread

T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def parallel(n_items: int, ahead: int = 4) -> bool:
    """Whether ordered_map(…, items of this length) runs on worker threads.  Callers use it to let
    a single layer use both cores (spectral's split Grams) exactly when the layers run one by one."""
    return workers() >= 2 and n_items >= ahead


def ordered_map(fn: Callable[[T], R], items: Sequence[T], ahead: int = 4) -> Iterator[R]:
    if not parallel(len(items), ahead):
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor  # imported on first use: CLI start-up time

    def work(item: T) -> R:
        with one_blas_thread():
            return fn(item)

    with ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="lorascope-layers") as pool:
        pending = [pool.submit(work, item) for item in items[:ahead]]
        for i in range(len(items)):
            result = pending[i].result()
            if i + ahead < len(items):
                pending.append(pool.submit(work, items[i + ahead]))
            pending[i] = None  # type: ignore[call-overload]  (drop the finished future)
            yield result
