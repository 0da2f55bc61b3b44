"""Timing child processes, shared by the benchmark scripts: wall time and peak RSS of one command,
best-of-N summaries, the lorascope command line, and warming the page cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class ChildFailed(SystemExit):
    """A timed command exited non-zero or ran out of time.  Uncaught, it ends the benchmark with
    its one-line message (a SystemExit); callers that can go on without the command catch it."""


def steal_s() -> float:
    """CPU time the hypervisor gave to other guests so far (all CPUs, /proc/stat), 0 where unknown.
    A benchmark reads it before and after its timed runs (`steal_share`): much of it means the
    machine was shared with someone else, and the times measure that, not the code."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def steal_share(since: float, t0: float) -> float:
    """The share of the CPUs' time since (`steal_s()`, `time.perf_counter()`) = (since, t0) that
    went to other guests."""
    elapsed = time.perf_counter() - t0
    return (steal_s() - since) / elapsed / len(os.sched_getaffinity(0)) if elapsed > 0 else 0.0


def warm_cache(weights: Path) -> None:
    with open(weights, "rb") as f:
        while f.read(1 << 24):
            pass


def run_child(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process; stdout discarded, must exit 0.

    The RSS is GNU time's %M (the child's ru_maxrss, as `/usr/bin/time -v` reports it).  Not
    os.wait4 on a child forked from this process: Linux carries the parent's RSS at fork into the
    child's ru_maxrss, so a large benchmark process would inflate the number; wait4's value is used
    only where GNU time is missing."""
    gnu_time = Path("/usr/bin/time")
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        full = [str(gnu_time), "-f", "%M", "-o", str(rss_file), *cmd] if gnu_time.is_file() else cmd
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
            if wall >= timeout:
                raise ChildFailed(f"{' '.join(cmd)}: killed after {timeout:.0f} s")
        err = proc.stderr.read().decode() if proc.stderr else ""
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise ChildFailed(f"{' '.join(cmd)} failed ({code}): {err.strip()[-2000:]}")
        kib = int(rss_file.read_text().split()[-1]) if gnu_time.is_file() else usage.ru_maxrss
    return wall, kib / 1024.0  # Linux: KiB


def best_of(
    cmd: list[str], repeats: int, env: dict[str, str] | None = None, timeout: float | None = None
) -> dict:
    runs = [run_child(cmd, env, timeout) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    return {
        "wall_s": min(walls),
        "wall_median_s": float(np.median(walls)),
        "walls_s": walls,
        "peak_rss_mb": max(r for _, r in runs),
    }


def lorascope_cmd() -> list[str]:
    script = Path(sys.executable).with_name("lorascope")
    if script.is_file():
        return [str(script)]
    found = shutil.which("lorascope")
    return [found] if found else [sys.executable, "-m", "lorascope"]
