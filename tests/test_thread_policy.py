"""The thread policy reaches torch's intra-op pool and the work outside `ordered_map`: gid's
calibration, a bench's training threads and the LAPACK calls of a serial section stay within
`cores()` (LORASCOPE_THREADS), so no idle thread spins beside a busy machine's other processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from lorascope import parallel

torch = pytest.importorskip("torch")

from lorascope.gid import CalibrationConfig, calibrate  # noqa: E402

pytestmark = pytest.mark.torch


def blas_threads_now() -> int:
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.fixture
def torch_threads():
    """torch at 2 intra-op threads for the test (a 1-core runner included), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_workers_hold_torch_at_one_thread_each(monkeypatch, torch_threads):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    seen = list(parallel.ordered_map(lambda _: torch.get_num_threads(), list(range(6))))
    assert seen == [1] * 6  # 2 workers × 1 thread, torch's pool included
    assert torch.get_num_threads() == 2  # restored


def test_serial_section_follows_lorascope_threads(monkeypatch, torch_threads):
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    monkeypatch.setenv("LORASCOPE_THREADS", "1")
    with parallel.serial():
        assert (blas_threads_now(), torch.get_num_threads()) == (1, 1)
    assert torch.get_num_threads() == 2


def test_serial_section_never_raises_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(parallel, "cores", lambda: 4)
    torch.set_num_threads(1)  # e.g. OMP_NUM_THREADS=1, as Ray sets for a one-CPU task
    try:
        with parallel.serial():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_gid_calibration_runs_within_the_policy(monkeypatch, torch_threads):
    """Backward passes and spectra on LORASCOPE_THREADS threads (torch's default is every core)."""
    monkeypatch.setenv("LORASCOPE_THREADS", "1")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    seen: list[tuple[int, int]] = []

    def loss(m, batch):
        seen.append((torch.get_num_threads(), blas_threads_now()))
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x), y)

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 8, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(2)]
    report = calibrate(model, batches, loss, None, CalibrationConfig(steps=2))
    assert len(report.layers) == 2 and seen == [(1, 1), (1, 1)]
    assert torch.get_num_threads() == 2  # restored after the calibration


def test_bench_training_threads_are_capped_by_the_policy(monkeypatch, torch_threads):
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert parallel.set_torch_threads(4) == 1 and torch.get_num_threads() == 1  # train.threads: 4
    monkeypatch.setattr(parallel, "cores", lambda: 8)
    assert parallel.set_torch_threads(3) == 3 and torch.get_num_threads() == 3
    assert parallel.set_torch_threads(None) == 3  # unset: torch's own count, within the cores


def test_idle_threads_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    parallel.idle_threads_sleep()
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["OPENBLAS_THREAD_TIMEOUT"]) == ("PASSIVE", "4")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "28")
    parallel.idle_threads_sleep()
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["OPENBLAS_THREAD_TIMEOUT"]) == ("ACTIVE", "28")


def test_a_cli_process_sets_the_wait_policy_before_numpy_loads():
    """A real process (main() without argv) sets both before the command's modules load numpy
    (whose OpenBLAS reads its variable then) or torch."""
    code = (
        "import os, sys\nimport lorascope.cli.main as m\n"
        "seen = []\n"
        "real = m.build_parser\n"
        "def spy(first):\n"
        "    seen.append(('numpy' in sys.modules, os.environ.get('OMP_WAIT_POLICY'),"
        " os.environ.get('OPENBLAS_THREAD_TIMEOUT')))\n"
        "    return real(first)\n"
        "m.build_parser = spy\n"
        "m.guarded = lambda run: 0\n"
        "sys.argv = ['lorascope', 'audit', 'x']\nm.main()\nprint(seen)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(parallel.__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout == "[(False, 'PASSIVE', '4')]\n", out.stderr
