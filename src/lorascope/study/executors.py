"""Executors: run `worker.audit_one` over a stream of jobs, yield the outcomes in job order.

Jobs travel in batches (`batches`: consecutive jobs, several small adapters per task, so that the
per-task cost of the pool or of Ray is paid once per batch rather than once per adapter).  Both
executors keep at most `4 × workers` batches in flight and yield outcomes in the order of the jobs:
a batch that finished early waits for the ones before it (at most the in-flight window), so the
driver's memory does not grow with the number of adapters, and the journals, hence every output
file, are the same whichever executor ran and however the work interleaved.  The price: a batch
much slower than the ones after it can leave workers idle once the window behind it is done.

* `local`: a process pool.  On Linux its workers are forked from the driver, which has imported
  the audit (numpy included) and runs no thread at that moment (the pool starts every worker before
  its own management thread): a worker costs no interpreter start and no imports, which is most of
  a small adapter's audit time.  Elsewhere they are spawned.  Every worker dies with its driver,
  even one killed by SIGKILL (`_die_with_driver`).  A worker that dies (a signal, the kernel's OOM
  killer) breaks the pool: the batches that finished stand, the jobs of the others are re-run one
  at a time, each in a fresh one-worker pool, so that only the job that kills its worker again is
  recorded as "worker crashed".  Then a new pool takes the remaining jobs.
* `ray`: the same function as Ray tasks (`num_cpus=1`, no retries).  It joins the cluster named
  by RAY_ADDRESS (or a running local one), or starts a local Ray with `workers` CPUs.  A batch whose
  worker dies is re-run one job per task, so that only the culprit is that job's "worker crashed".
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

from ..errors import MissingDependencyError
from ..parallel import connect_ray
from .failure import crashed, failure
from .sources import Job, adapter_bytes
from .worker import Outcome, audit_one

EXECUTORS = ("local", "ray")
Task = Callable[[Job], Outcome]
Batch = tuple[Job, ...]
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# a batch's adapter bytes: ≈ 60 ms of audit at the measured ≈ 15 MB/s of small fp16 adapters
BATCH_BYTES = 1 << 20
WATCHDOG_S = 0.5  # how often a worker checks that its driver is alive (where prctl is missing)


def run_jobs(
    jobs: Iterable[Job], workers: int, executor: str = "local", task: Task = audit_one, batch: int = 1
) -> Iterator[Outcome]:
    """Outcomes of `jobs`, in their order; `batch`: at most this many jobs per task (`batches`)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    run = _local if executor == "local" else _ray
    for outcomes in run(batches(jobs, batch), workers, task):
        yield from outcomes


def batches(jobs: Iterable[Job], most: int, max_bytes: int = BATCH_BYTES) -> Iterator[Batch]:
    """Consecutive jobs, at most `most` per batch and, past the first, at most `max_bytes` of
    adapter files in all: small adapters share a task, a large one has its own.  A repository
    (size unknown before it is resolved) always goes alone."""
    chunk: list[Job] = []
    total = 0
    for job in jobs:
        size = _size(job) if most > 1 else 0
        if chunk and (len(chunk) >= most or total + size > max_bytes):
            yield tuple(chunk)
            chunk, total = [], 0
        chunk.append(job)
        total += size
    if chunk:
        yield tuple(chunk)


def _size(job: Job) -> int:
    if job.repo_id is not None:
        return BATCH_BYTES + 1
    try:
        return adapter_bytes(Path(job.source))
    except OSError:  # missing or unreadable: its failure costs nothing to find
        return 0


def run_batch(task: Task, jobs: Batch) -> list[Outcome]:
    """One task's work: `task` of each job in turn (module level: it travels to the workers)."""
    return [task(job) for job in jobs]


def _die_with_driver(driver: int) -> None:
    """Pool initializer: end this worker when its driver process ends, however it ends.
    Linux: the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; the pool forks
    its workers from the driver's main thread, whose end is the process's end).  Everywhere: a
    daemon thread that exits the worker once its parent is no longer the driver (re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass
    if os.getppid() != driver:  # the driver died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(WATCHDOG_S)
        os._exit(1)

    threading.Thread(target=watch, name="lorascope-driver-watch", daemon=True).start()


def _pool(workers: int) -> ProcessPoolExecutor:
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context(method),
        initializer=_die_with_driver,
        initargs=(os.getpid(),),
    )


def _local(work: Iterator[Batch], workers: int, task: Task) -> Iterator[list[Outcome]]:
    ahead = 4 * workers  # enough queued that no worker waits on the driver between small tasks
    while True:
        pool = _pool(workers)
        queue: deque[tuple[Future, Batch]] = deque()
        broken = False
        try:
            for b in islice(work, ahead):
                queue.append((pool.submit(run_batch, task, b), b))
            while queue and not broken:
                fut, b = queue[0]
                try:
                    outcomes = fut.result()
                except BrokenProcessPool:
                    broken = True
                    break
                except Exception as e:  # noqa: BLE001  (e.g. a result that cannot be sent back)
                    outcomes = [Outcome(j.source, failure=failure(j.source, e)) for j in b]
                queue.popleft()
                for nxt in islice(work, 1):
                    queue.append((pool.submit(run_batch, task, nxt), nxt))
                yield outcomes
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if not broken:
            return
        for fut, b in queue:  # finished batches stand; each job of the others alone, in order
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                yield fut.result()
            else:
                yield [_alone(job, task) for job in b]


def _alone(job: Job, task: Task) -> Outcome:
    with _pool(1) as pool:
        try:
            return pool.submit(task, job).result()
        except BrokenProcessPool:
            return Outcome(job.source, failure=crashed(job.source))


def _ray(work: Iterator[Batch], workers: int, task: Task) -> Iterator[list[Outcome]]:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'lorascope[study]'") from None
    connect_ray(ray, workers)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_batch)
    ahead = 4 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
    queue = deque((remote.remote(task, b), b) for b in islice(work, ahead))
    while queue:
        ref, b = queue.popleft()
        for nxt in islice(work, 1):
            queue.append((remote.remote(task, nxt), nxt))
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError:  # the task's process died (a bug in audit_one is caught there)
            yield [_ray_alone(ray, remote, task, job) for job in b]


def _ray_alone(ray, remote, task: Task, job: Job) -> Outcome:
    try:
        return ray.get(remote.remote(task, (job,)))[0]
    except ray.exceptions.RayError:
        return Outcome(job.source, failure=crashed(job.source))
