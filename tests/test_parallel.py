"""The thread policy: workers × BLAS threads ≤ cores, results in order, bounded work in flight."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from lorascope import parallel
from lorascope.parallel import cores, ordered_map, plan


def blas_threads_now() -> int:
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.mark.parametrize("n_cores", [1, 2, 3, 8])
@pytest.mark.parametrize("n_items", [0, 1, 2, 5, 1000])
def test_plan_never_oversubscribes(monkeypatch, n_cores, n_items):
    monkeypatch.setattr(parallel, "cores", lambda: n_cores)
    workers, threads = plan(n_items)
    assert workers >= 1 and threads >= 1
    assert workers * threads <= n_cores
    assert workers <= max(1, n_items)
    if n_items >= n_cores:
        assert (workers, threads) == (n_cores, 1)


def test_lorascope_threads_caps_the_cores(monkeypatch):
    monkeypatch.setenv("LORASCOPE_THREADS", "1")
    assert cores() == 1
    monkeypatch.setenv("LORASCOPE_THREADS", "not a number")
    assert cores() >= 1


def test_results_in_order_and_blas_held_inside_workers(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    np.ones((4, 4)) @ np.ones((4, 4))  # BLAS loaded
    seen: list[tuple[int, int, str]] = []

    def work(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # finish out of order
        seen.append((i, blas_threads_now(), threading.current_thread().name))
        return i * i

    assert list(ordered_map(work, list(range(12)))) == [i * i for i in range(12)]
    assert {t for _, t, _ in seen} == {1}  # 2 workers × 1 BLAS thread
    assert all(name.startswith("lorascope") for _, _, name in seen)


def test_single_item_gets_every_core_for_blas(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    np.ones((4, 4)) @ np.ones((4, 4))
    before = blas_threads_now()
    assert list(ordered_map(lambda _: blas_threads_now(), [0])) == [2]  # 1 worker × 2 BLAS threads
    assert blas_threads_now() == before  # restored


def test_work_in_flight_is_bounded(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    started: list[int] = []
    gen = ordered_map(lambda i: started.append(i) or i, list(range(100)), ahead=4)
    assert next(gen) == 0
    time.sleep(0.05)
    assert len(started) <= 5  # the first result plus at most `ahead` submitted
    gen.close()


def test_worker_error_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(parallel, "cores", lambda: 2)

    def work(i: int) -> int:
        if i == 3:
            raise ValueError("layer 3 is broken")
        return i

    with pytest.raises(ValueError, match="layer 3 is broken"):
        list(ordered_map(work, list(range(10))))


def test_an_error_stops_the_items_not_yet_started(monkeypatch):
    """After an item fails, the queued items ahead of the caller are cancelled, not run (the pool
    used to finish all of them, each possibly seconds of work, before the error came out)."""
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    ran: list[int] = []

    def work(i: int) -> int:
        ran.append(i)
        if i == 0:
            raise ValueError("layer 0 is broken")
        time.sleep(1.0)  # items 1 and 2 hold both workers while the error reaches the caller
        return i

    with pytest.raises(ValueError, match="layer 0 is broken"):
        list(ordered_map(work, list(range(10)), ahead=4))
    assert 3 not in ran and sorted(ran) in ([0, 1], [0, 1, 2])


def test_a_blas_loaded_after_the_first_pass_is_held_too():
    """scipy brings its own OpenBLAS: loaded after the policy first looked at the process, it must
    still be held inside the workers (it ran free at 2 threads beside ours before)."""
    pytest.importorskip("scipy")
    code = """
import numpy as np
from threadpoolctl import threadpool_info
from lorascope import parallel
parallel.cores = lambda: 2
list(parallel.ordered_map(lambda i: i, list(range(4))))  # the policy looks at the process first
import scipy.linalg  # noqa: F401  (a second BLAS arrives)
seen = []
def work(i):
    seen.append(sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}))
    return i
list(parallel.ordered_map(work, list(range(8))))
n_blas = len([lib for lib in threadpool_info() if lib["user_api"] == "blas"])
print(n_blas, sorted({t for s in seen for t in s}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_blas, threads = out.stdout.split(" ", 1)
    assert int(n_blas) >= 2 and threads.strip() == "[1]", out.stdout
