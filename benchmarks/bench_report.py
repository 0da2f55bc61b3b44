"""`lorascope report` on a Mistral-7B-shaped adapter: wall time, peak RSS, page size, and how fast
the page is interactive in headless Chromium (the browser's Navigation Timing API).

    python benchmarks/bench_report.py [ADAPTER_DIR] [--repeats 5] [--json benchmarks/results/report.json]
    python benchmarks/bench_report.py ADAPTER_DIR --baseline OLD/src [--repeats 7]   # old vs new

ADAPTER_DIR defaults to a fresh adapter from make_mistral_adapter.py (224 layers, r=64, bf16) in a
temporary directory.  Each run is a whole process (`lorascope report ADAPTER -o page.html`: the
audit on the fly, the plots, the page), page cache warm, bytecode caching on; wall time and peak
RSS per run as GNU time reports them (%e, %U + %S, %M).  The browser part opens the page `--loads`
times in one headless Chromium (tests/headless.py) and reports domInteractive /
domContentLoadedEventEnd / loadEventEnd in milliseconds from navigation start.  Targets: ≤ 3 s,
≤ 300 MB, page ≤ 2 MB, interactive ≤ 1 s.

`--baseline OLD/src`: compare another checkout's code (e.g. a `git worktree add /tmp/base COMMIT`)
with this one's, on the same adapter: `python -m lorascope` with PYTHONPATH set to either src,
one untimed warm-up each (it also writes the bytecode caches), then interleaved old, new, old,
new, … (a shared, noisy machine drifts between runs; interleaving spreads the drift over both);
medians of wall and CPU time per side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _child import lorascope_cmd, warm_cache

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the DevTools client the browser tests use


def child_env(pythonpath: str | None = None) -> dict[str, str]:
    """The children's environment: bytecode caching allowed, as users run the command
    (PYTHONDONTWRITEBYTECODE would recompile every lorascope module in every run)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall, user and system CPU seconds and peak RSS (MB) of one process, by GNU time."""
    with tempfile.NamedTemporaryFile("r") as out:
        gnu_time = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", out.name]
        subprocess.run([*gnu_time, *cmd], check=True, env=env or child_env())
        wall, user, sys_, rss_kib = out.read().split()[-4:]
    return {"wall_s": float(wall), "cpu_s": float(user) + float(sys_), "peak_rss_mb": int(rss_kib) / 1024}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def browser_timing(page: Path, loads: int) -> dict | None:
    from headless import Browser, find_browser

    exe = find_browser()
    if exe is None:
        return None
    b = Browser(exe)
    try:
        b.open_page(1200, 900)
        runs = []
        for _ in range(loads):
            b.navigate(page.as_uri())
            runs.append(b.evaluate("performance.getEntriesByType('navigation')[0].toJSON()"))
        problems = b.problems()
    finally:
        b.close()
    keys = ("domInteractive", "domContentLoadedEventEnd", "loadEventEnd")
    return {
        "loads": loads,
        **{f"{k}_ms_median": statistics.median(r[k] for r in runs) for k in keys},
        **{f"{k}_ms_max": max(r[k] for r in runs) for k in keys},
        "console_problems": problems,
    }


def compare(adapter: Path, baseline: str, repeats: int, tmp: str) -> dict:
    """Interleaved whole-process runs of the baseline's src and this checkout's."""
    sides = {"baseline": str(Path(baseline).resolve()), "new": str(HERE.parent / "src")}
    page = Path(tmp) / "cmp.html"
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    loads = []
    for i in range(repeats + 1):  # round 0: the untimed warm-up (bytecode, page cache)
        for side, src in sides.items():
            page.unlink(missing_ok=True)
            loads.append(load_average())
            cmd = [sys.executable, "-m", "lorascope", "report", str(adapter), "-o", str(page), "-q"]
            run = timed(cmd, child_env(src))
            if i:
                runs[side].append(run)
    out: dict = {"sides": sides, "repeats": repeats, "load_average_1min": loads}
    for side, rs in runs.items():
        out[side] = {
            "wall_s_median": statistics.median(r["wall_s"] for r in rs),
            "walls_s": [r["wall_s"] for r in rs],
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rs),
            "cpus_s": [r["cpu_s"] for r in rs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
    out["wall_speedup"] = out["baseline"]["wall_s_median"] / out["new"]["wall_s_median"]
    out["cpu_speedup"] = out["baseline"]["cpu_s_median"] / out["new"]["cpu_s_median"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", nargs="?", help="adapter directory (default: make a Mistral-shaped one)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loads", type=int, default=5, help="page loads in the browser")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--baseline", metavar="SRC", help="another checkout's src folder: compare old vs new")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(args.adapter) if args.adapter else Path(tmp) / "mistral"
        if not args.adapter:
            subprocess.run([sys.executable, str(HERE / "make_mistral_adapter.py"), str(adapter)], check=True)
        warm_cache(adapter / "adapter_model.safetensors")
        if args.baseline:
            result = compare(adapter, args.baseline, args.repeats, tmp)
            result["cores"] = len(os.sched_getaffinity(0))
            return finish(result, args.json)
        page = Path(tmp) / "page.html"
        runs, loads = [], []
        for _ in range(args.repeats):  # -o refuses an existing file: a fresh name per run
            page.unlink(missing_ok=True)
            loads.append(load_average())
            runs.append(timed([*lorascope_cmd(), "report", str(adapter), "-o", str(page), "-q"]))
        result = {
            "adapter": "Mistral-7B-shaped, 224 layers, r=64, bf16" if not args.adapter else str(adapter),
            "cores": len(os.sched_getaffinity(0)),
            "load_average_1min": loads,  # the machine is shared: wall time depends on it
            "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            "wall_s_best": min(r["wall_s"] for r in runs),
            "walls_s": [r["wall_s"] for r in runs],
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "page_bytes": page.stat().st_size,
            "browser": browser_timing(page, args.loads),
        }
    return finish(result, args.json)


def finish(result: dict, json_path: str | None) -> int:
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
