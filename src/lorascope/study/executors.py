"""Executors: run `worker.audit_one` over a stream of jobs, yield outcomes as they finish.

Both keep at most `4 × workers` jobs in flight and pull the next job only when one finishes, so
the driver's memory does not grow with the number of adapters (each outcome is written to disk and
dropped by the caller).  Outcomes arrive in completion order; the study's files are order-free.

* `local`: a process pool.  On Linux its workers are forked from the driver, which has imported
  the audit (numpy included) and runs no thread at that moment (the pool starts every worker before
  its own management thread): a worker costs no interpreter start and no imports, which is most of
  a small adapter's audit time.  Elsewhere they are spawned.  A worker that dies (a signal,
  the kernel's OOM killer) breaks the pool: the jobs then in flight are re-run one at a time, each
  in a fresh one-worker pool, so that only the job that kills its worker again is recorded as
  "worker crashed"; the others' results stand.  Then a new pool takes the remaining jobs.
* `ray`: the same function as Ray tasks (`num_cpus=1`, no retries).  It joins the cluster named
  by RAY_ADDRESS (or a running local one), or starts a local Ray with `workers` CPUs.  A task whose
  worker dies is that job's "worker crashed" failure; Ray knows which job it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from multiprocessing import get_context

from ..errors import MissingDependencyError
from .sources import Job
from .worker import Outcome, audit_one, failure

EXECUTORS = ("local", "ray")
Task = Callable[[Job], Outcome]


def run_jobs(
    jobs: Iterable[Job], workers: int, executor: str = "local", task: Task = audit_one
) -> Iterator[Outcome]:
    if executor == "local":
        return _local(iter(jobs), workers, task)
    if executor == "ray":
        return _ray(iter(jobs), workers, task)
    raise ValueError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")


def _crashed(job: Job, why: str) -> Outcome:
    reason = f"worker crashed while auditing it ({why})"
    return Outcome(job.source, failure={"source": job.source, "kind": "worker crashed", "reason": reason})


def _pool(workers: int) -> ProcessPoolExecutor:
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method))


def _local(jobs: Iterator[Job], workers: int, task: Task) -> Iterator[Outcome]:
    ahead = 4 * workers  # enough queued that no worker waits on the driver between small adapters
    while True:
        pool, pending = _pool(workers), {}
        broken = False
        try:
            for job in islice(jobs, ahead):
                pending[pool.submit(task, job)] = job
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        pending[fut] = job  # keep it with the other suspects
                        broken = True
                        break
                    except Exception as e:  # noqa: BLE001  (e.g. a result that cannot be sent back)
                        outcome = Outcome(job.source, failure=failure(job.source, e))
                    yield outcome
                    for nxt in islice(jobs, 1):
                        pending[pool.submit(task, nxt)] = nxt
                if broken:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if not broken:
            return
        for job in pending.values():  # isolate the culprit: each suspect alone in a fresh pool
            yield _alone(job, task)


def _alone(job: Job, task: Task) -> Outcome:
    with _pool(1) as pool:
        try:
            return pool.submit(task, job).result()
        except BrokenProcessPool as e:
            return _crashed(job, str(e) or "the process died")


def _ray(jobs: Iterator[Job], workers: int, task: Task) -> Iterator[Outcome]:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'lorascope[study]'") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        cpus = None if address else workers  # a cluster brings its own CPUs
        ray.init(address=address, num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(task)
    ahead = 4 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
    pending = {}
    for job in islice(jobs, ahead):
        pending[remote.remote(job)] = job
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ref)
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError as e:  # the task's process died (a bug in audit_one is caught there)
            yield _crashed(job, type(e).__name__)
        for nxt in islice(jobs, 1):
            pending[remote.remote(nxt)] = nxt
