"""`lorascope study` execution: resume after a kill ends with the same tables, a worker that dies
is isolated and recorded, and the Ray executor gives the local executor's results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_study import known_adapter

from lorascope.study import StudyOptions, run_study
from lorascope.study.executors import run_jobs
from lorascope.study.failure import Failure
from lorascope.study.sources import Job
from lorascope.study.worker import audit_one

pytestmark = pytest.mark.slow  # the fast lane (make test-fast) skips it

SRC = Path(__file__).resolve().parents[1] / "src"


def crashing_task(job: Job):
    """audit_one, except that a source named *crash* kills its worker process outright."""
    if "crash" in Path(job.source).name:
        os._exit(3)
    return audit_one(job)


@pytest.fixture
def many(tmp_path):
    """24 small adapters, ranks 2..16, random decaying spectra, plus a broken file."""
    rng = np.random.default_rng(7)
    root = tmp_path / "many"
    for i in range(24):
        r = (2, 4, 8, 16)[i % 4]
        sigma = list(rng.uniform(0.2, 1.0) ** np.arange(r))
        names = {
            f"model.layers.{j}.{m}": sigma for j in range(2) for m in ("self_attn.q_proj", "mlp.up_proj")
        }
        known_adapter(root / f"ad{i:02d}", names, r, rng)
    (root / "broken.safetensors").write_bytes(b"\x00" * 100)
    return root


def _without_time(out: Path) -> list[dict]:
    """adapters.jsonl in file order, without the one field that differs between runs: timings."""
    records = []
    for line in open(out / "adapters.jsonl"):
        rec = json.loads(line)
        rec.pop("time")
        records.append(rec)
    return records


def _same_study(a: Path, b: Path) -> None:
    """Every output byte for byte (adapters.jsonl: but for its timings, in the same order)."""
    for name in ("study.json", "study.md", "layers.csv", "failures.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _without_time(a) == _without_time(b)


def test_resume_repairs_a_journal_cut_mid_line(many, tmp_path):
    ref = tmp_path / "ref"
    run_study([str(many)], ref, StudyOptions(workers=2))
    cut = tmp_path / "cut"
    cut.mkdir()
    lines = (ref / "adapters.jsonl").read_text().splitlines(keepends=True)
    kept = lines[:10]
    (cut / "adapters.jsonl").write_text("".join(kept) + lines[10][:40])  # a record cut by the kill
    keep_sources = {json.loads(x)["source"] for x in lines[:11]}  # rows of one more, never recorded
    layer_lines = (ref / "layers.csv").read_text().splitlines(keepends=True)
    rows = [x for x in layer_lines[1:] if x.split(",")[0] in keep_sources]
    (cut / "layers.csv").write_text(layer_lines[0] + "".join(rows) + rows[-1][:25])
    (cut / "failures.jsonl").write_text("")
    result = run_study([str(many)], cut, StudyOptions(workers=2, resume=True))
    assert result.n_skipped == 10 and result.n_adapters == 24 and result.n_failed == 1
    _same_study(ref, cut)


def test_resume_after_sigkill(many, tmp_path):
    ref = tmp_path / "ref"
    run_study([str(many)], ref, StudyOptions(workers=1))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "lorascope", "study", str(many), "--out", str(out), "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    journal = out / "adapters.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its worker processes, at once
    proc.wait()
    done = journal.read_text().count("\n")
    if (out / "study.json").exists():
        pytest.skip("the study finished before it could be killed")
    assert 3 <= done <= 24  # 24: killed while the tables were being written
    result = run_study([str(many)], out, StudyOptions(workers=1, resume=True))
    assert result.n_skipped >= 3 and result.n_adapters + result.n_failed == 25
    _same_study(ref, out)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_worker_that_dies_is_isolated_and_recorded(many, tmp_path, batch):
    sources = sorted(str(p) for p in many.iterdir() if p.is_dir())[:6]
    crash = tmp_path / "crash"
    crash.symlink_to(many / "ad00", target_is_directory=True)
    jobs = [Job(s) for s in sources[:3]] + [Job(str(crash))] + [Job(s) for s in sources[3:]]
    got = list(run_jobs(jobs, 2, "local", task=crashing_task, batch=batch))
    assert [o.source for o in got] == [j.source for j in jobs]  # in job order, each once
    outcomes = {o.source: o for o in got}
    assert outcomes[str(crash)].failure == Failure(
        str(crash), "worker crashed", "the worker process died while auditing it"
    )
    assert all(outcomes[s].record is not None for s in sources)


@pytest.mark.slow  # ≈ 25 s: Ray's start
def test_ray_executor_matches_local(many, tmp_path):
    ray = pytest.importorskip("ray")
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_study([str(many)], local, StudyOptions(workers=2))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(SRC)}},
    )
    try:
        result = run_study([str(many)], remote, StudyOptions(workers=2, executor="ray"))
    finally:
        ray.shutdown()
    assert result.n_adapters == 24 and result.n_failed == 1
    _same_study(local, remote)


@pytest.mark.slow  # ≈ 25 s: Ray's start
def test_ray_started_by_the_study_is_a_new_local_one_of_the_workers_size(many, tmp_path, monkeypatch, capfd):
    """Without RAY_ADDRESS and without a Ray already started, the study starts a new local Ray of
    `workers` CPUs (never one left running by `ray start`), and says nothing on stderr about it."""
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(SRC))  # the workers import this checkout
    assert not ray.is_initialized()
    try:
        result = run_study([str(many)], tmp_path / "ray", StudyOptions(workers=2, executor="ray"))
        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2
    finally:
        ray.shutdown()
    assert result.n_adapters == 24 and result.n_failed == 1
    assert "Started a local Ray instance" not in capfd.readouterr().err


def test_workers_die_with_a_killed_driver(tmp_path):
    """SIGKILL to the study alone (not its process group): its pool workers must not outlive it.
    A stand-in huggingface_hub whose download never returns keeps both workers busy on two
    repository ids, so the study is certainly mid-run when it is killed."""
    psutil = pytest.importorskip("psutil")
    fake = tmp_path / "fakehub"
    fake.mkdir()
    (fake / "huggingface_hub.py").write_text(
        "import time\n\ndef snapshot_download(*a, **k):\n    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{SRC}"}
    cmd = [sys.executable, "-m", "lorascope", "study", "org/slow0", "org/slow1"]
    cmd += ["--out", str(tmp_path / "out"), "--workers", "2", "-q"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(driver.children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = driver.children(recursive=True)
        time.sleep(1.0)  # the workers are inside the endless download
        assert len(workers) == 2 and proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=10)  # generous: the watchdog polls at 0.5 s
        assert alive == [] and len(gone) == 2
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, if the test failed
        except ProcessLookupError:
            pass


def test_batches_group_small_adapters_and_keep_large_ones_alone(many, tmp_path):
    from lorascope.study.executors import BATCH_BYTES, batches
    from lorascope.study.sources import adapter_bytes

    small = sorted(str(p) for p in many.iterdir() if p.is_dir())
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (BATCH_BYTES + 1))  # no adapter: its size is what matters here
    jobs = [Job(s) for s in small[:5]] + [Job(str(big))] + [Job(s) for s in small[5:7]]
    jobs += [Job("hf:org/x", repo_id="org/x"), Job(str(tmp_path / "missing"))]
    got = [[j.source for j in b] for b in batches(jobs, 3)]
    assert got == [small[0:3], small[3:5], [str(big)], small[5:7], ["hf:org/x"], [str(tmp_path / "missing")]]
    assert sum(adapter_bytes(Path(s)) for s in small[:3]) < BATCH_BYTES
    assert [len(b) for b in batches(jobs, 1)] == [1] * len(jobs)


def test_batching_changes_no_output(many, tmp_path):
    one, auto = tmp_path / "one", tmp_path / "auto"
    run_study([str(many)], one, StudyOptions(workers=2, batch=1))
    run_study([str(many)], auto, StudyOptions(workers=2, batch=7))
    _same_study(one, auto)


WATCHDOG_SCRIPT = """
import os, sys, time
from lorascope.study import executors
executors.sys = type("NoLinux", (), {"platform": "other"})  # no prctl: the watchdog thread alone
driver = os.fork()
if driver == 0:
    me = os.getpid()  # taken before the fork, as the pool does: the driver may be gone by the
    worker = os.fork()  # time the worker runs, and its getppid() would then name the new parent
    if worker == 0:
        executors._die_with_driver(me)
        time.sleep(60)  # what a worker without a watchdog would do: outlive its driver
        os._exit(0)
    print(worker, flush=True)
    os._exit(0)  # the driver ends at once; its worker is re-parented
os.waitpid(driver, 0)
"""


def test_the_watchdog_alone_ends_a_worker_whose_driver_is_gone():
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG_SCRIPT], env=env, stdout=subprocess.PIPE, text=True
    )
    worker = int(proc.stdout.readline())
    proc.wait()
    deadline = time.monotonic() + 20  # generous: the watchdog polls every 0.5 s; the failure mode is 60 s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        psutil.Process(worker).kill()
        pytest.fail("the worker outlived its driver")
    proc.stdout.close()
