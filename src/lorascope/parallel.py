"""The one thread policy of every command: workers × BLAS threads ≤ cores.

`ordered_map(fn, items)` runs a per-layer function on `w` worker threads, results in input order,
while the BLAS library (numpy's OpenBLAS, or whatever `threadpoolctl` finds loaded) is held at
`cores // w` threads.  numpy releases the GIL in file reads, dtype widening, BLAS and LAPACK, so
worker threads that each take whole layers keep every core busy through the phases that are
single-threaded inside one layer (eigensolves, small products, reads) without oversubscribing:
with one BLAS thread per worker, no thread ever spins waiting for another, which is what made a
command 5-50× slower when other processes loaded the cores (OpenBLAS's idle threads busy-wait).
Fewer items than workers: one worker per item, and BLAS gets the remaining cores.

`cores()` counts the CPUs this process may run on (its affinity mask, so `taskset` and cgroup
cpusets are honoured), capped by `LORASCOPE_THREADS` when set.  At most `ahead` items are in
flight, so memory stays bounded by a few layers whatever the adapter's size.  The limit is set
with threadpoolctl (process-wide, restored on exit); environment variables such as
OPENBLAS_NUM_THREADS, which only work before numpy is imported, are not used.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cores() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    limit = os.environ.get("LORASCOPE_THREADS", "")
    return max(1, min(n, int(limit))) if limit.isdigit() and int(limit) > 0 else max(1, n)


def plan(n_items: int, max_workers: int | None = None) -> tuple[int, int]:
    """(workers, BLAS threads per worker) for `n_items` independent items: workers × threads ≤ cores.
    `max_workers` caps the workers for items whose working set is large (merge's dense ΔW), which
    then get the cores as BLAS threads instead."""
    c = cores()
    workers = max(1, min(c, n_items, max_workers or c))
    return workers, max(1, c // workers)


_SCAN: list = []  # [(number of loaded modules when scanned, ThreadpoolController)]


def _controller():
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries.  Scanning the process costs a few
    ms, so the view is kept until more modules are loaded: a library that arrives later (torch and
    its own BLAS, scipy) must be held too, or its threads run free beside ours."""
    import numpy  # noqa: F401  (load numpy's BLAS before looking for it)

    loaded = len(sys.modules)
    if not _SCAN or _SCAN[0][0] != loaded:
        from threadpoolctl import ThreadpoolController

        _SCAN[:] = [(loaded, ThreadpoolController())]
    return _SCAN[0][1]


# A forked child (multiprocessing) must rescan: its library handles are the parent's.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SCAN.clear)


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Hold every BLAS library of the process at `n` threads inside the block, and torch's intra-op
    pool (its own MKL/OpenMP, which threadpoolctl does not see) at most `n` when torch is loaded."""
    with _controller().limit(limits=n, user_api="blas"), _torch_at_most(n):
        yield


@contextmanager
def serial() -> Iterator[None]:
    """Work on the calling thread outside `ordered_map` (one worker: gid's backward passes and
    spectra, a layer computed ahead of the stream) under the same policy: BLAS, LAPACK and torch's
    intra-op threads within `cores()`, so LORASCOPE_THREADS and the affinity mask hold there too."""
    with blas_threads(plan(1)[1]):
        yield


def set_torch_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads for the rest of the process (a bench's training) to `requested`,
    or torch's own count when None (it follows OMP_NUM_THREADS, which Ray sets per task), capped at
    `cores()`; returns the count.  torch must already be imported."""
    torch = sys.modules["torch"]
    n = max(1, min(requested or torch.get_num_threads(), cores()))
    torch.set_num_threads(n)
    return n


def idle_threads_sleep() -> None:
    """Idle BLAS and OpenMP threads sleep at once instead of spinning, unless the user chose
    otherwise: OMP_WAIT_POLICY=PASSIVE (torch's intra-op pool is OpenMP) and
    OPENBLAS_THREAD_TIMEOUT=4 (an idle OpenBLAS thread spins 2^4 cycles, not 2^28, before it
    sleeps).  Both are read once, when the library loads (numpy, torch: lazily), so the CLI calls
    this before it imports any command.  On a 2-core machine loaded by other processes, the
    default waiting cost a 2-step `gid` calibration of MiniLM 11-71 user-s against 7.5-8.6 s
    passive (four runs each), and `audit` of the Mistral-shaped r=64 adapter 1.43 user-s against
    1.12-1.26 s (two runs each); `benchmarks/bench_busy.py` times every command quiet and busy."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


@contextmanager
def _torch_at_most(n: int) -> Iterator[None]:
    """torch's intra-op threads capped at `n` inside the block (never raised), restored after; a
    no-op when torch is not loaded (this module never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "get_num_threads") or torch.get_num_threads() <= n:
        yield  # not loaded (or still being imported), or already within n
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ordered_map(
    fn: Callable[[T], R], items: Sequence[T], ahead: int | None = None, max_workers: int | None = None
) -> Iterator[R]:
    """fn(item) for every item under the thread policy, yielded in input order as they finish.

    One worker (one core, one item, or max_workers=1): a plain loop on the calling thread with BLAS
    on every core."""
    workers, threads = plan(len(items), max_workers)
    with blas_threads(threads):
        if workers == 1:
            for item in items:
                yield fn(item)
            return
        from concurrent.futures import ThreadPoolExecutor  # imported on first use: CLI start-up time

        ahead = ahead or 2 * workers
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorascope") as pool:
            # futures of items i .. i+ahead-1; the finished one leaves the queue with its result
            pending = deque(pool.submit(fn, item) for item in items[:ahead])
            try:
                for i in range(len(items)):
                    result = pending.popleft().result()
                    if i + ahead < len(items):
                        pending.append(pool.submit(fn, items[i + ahead]))
                    yield result
            finally:  # an error or an abandoned loop: items not yet started never run
                for future in pending:
                    future.cancel()


def connect_ray(ray, local_cpus: int) -> None:
    """Connect the imported `ray` module unless this process already has: to the cluster named by
    RAY_ADDRESS (`auto`: the one `ray start` left on this machine), else a new local Ray of
    `local_cpus` CPUs, never a stray cluster; no dashboard, no worker logs or INFO lines on the
    driver's stderr.  The one rule bench and study share."""
    if ray.is_initialized():
        return
    import logging  # here, not at the top: every command imports this module before its work

    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(
        address=address,
        num_cpus=local_cpus if address == "local" else None,  # a cluster brings its own CPUs
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
