"""`--executor ray`: the bench's stages as Ray tasks.

The driver (protocol.Bench) runs every seed's probe as one task each, audits the probes itself
(numpy, seconds), then runs every (seed, variant) training and every control as one task each.  A
task is `Stages.run(job)` in a Ray worker: it writes its stage folder into --out through the same
crash-safe `StageStore` as the local executor, so --out must be a folder every worker can write (any
local Ray; on a cluster, a shared file system).  A finished stage is never run again, whichever
executor ran it: `--resume` works across executors, and a killed driver loses only the stages then
running.  A task whose worker dies is retried (twice); its partial folder is removed first.

Resources: one GPU per task when the bench runs on CUDA (`num_gpus=1`), else `train.threads` CPUs
(1 when unset).  Each worker builds its task data and tokenizer once and keeps them for its later
tasks.  Where: a running Ray instance if this process already called `ray.init`, else the cluster
named by RAY_ADDRESS, else a new local Ray on the cores this process may use (`parallel.cores`:
CPU affinity, LORASCOPE_THREADS) — never a cluster left running by `ray start` unless RAY_ADDRESS
names it.

Every stage depends only on the config, its seed and (controls) the probe's adapter, and Runtime
sets the torch thread count from `train.threads`: with `threads` set, a Ray run's numbers and files
equal the local run's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import LorascopeError, MissingDependencyError
from ..parallel import connect_ray, cores
from .config import BenchConfig, config_hash
from .results import TrainedRecord
from .setup import BenchOptions
from .stages import StageJob, Stages

_WORKER_STAGES: dict[tuple[str, str, str], Stages] = {}  # per worker process: built once


def run_stage(cfg: BenchConfig, out: str, device: str, job: StageJob) -> TrainedRecord:
    """One stage in a Ray worker (module-level, so workers import it by name)."""
    key = (config_hash(cfg), out, device)
    if key not in _WORKER_STAGES:
        _WORKER_STAGES[key] = Stages(cfg, Path(out), device)
    return _WORKER_STAGES[key].run(job)


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'ray>=2.9'") from None
    connect_ray(ray, cores())
    return ray


def run_on_ray(
    cfg: BenchConfig, opts: BenchOptions, jobs: list[StageJob], note: Callable[[str], None]
) -> list[TrainedRecord]:
    """Every job as a Ray task; the records in `jobs` order (notes in completion order)."""
    ray = _ray()
    gpus = 1 if opts.device == "cuda" else 0
    task = ray.remote(num_gpus=gpus, num_cpus=cfg.train.threads or 1, max_retries=2)(run_stage)
    out = str(opts.out.resolve())
    refs = {task.remote(cfg, out, opts.device, job): i for i, job in enumerate(jobs)}
    records: dict[int, TrainedRecord] = {}
    pending = list(refs)
    try:
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            i = refs[ref]
            try:
                records[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the stage raised: our error, as one line
                cause = getattr(e, "cause", None)
                if isinstance(cause, LorascopeError):
                    raise cause from None
                raise
            note(f"{jobs[i].label}: finished (ray)")
    finally:
        for ref in pending:  # after an error: stop what is still queued or running
            ray.cancel(ref, force=True)
    return [records[i] for i in range(len(jobs))]
