"""Where lorascope's time over the floor goes: a ladder of whole processes, from `_minimal.py` up
to the command as users run it, each rung adding one piece of lorascope's work.

    python benchmarks/bench_floor_gap.py [--repeats 7] [--json benchmarks/results/floor_gap.json]

Rungs (every one a fresh process, interleaved round by round, medians of wall and CPU time):

    audit
      floor        `_minimal.py audit A`: read, widen, Grams, Cholesky, eigenvalues; no output
      start        the floor's own start-up: its imports (numpy, json, struct, concurrent.futures)
      imports      the CLI's start-up: lorascope's modules, threadpoolctl and argparse, no work
      pass         imports + load A (header, keys, validation) + the spectral pass, results dropped
      report       pass + the audit report (per-layer metrics, summaries, suggestions), not written
      command      `lorascope audit A --json` (the report as JSON on stdout)
    merge-audit
      floor        `_minimal.py merge-audit A B`
      no-sign      `lorascope merge-audit A B --json` with the sign-conflict grid skipped
      command      `lorascope merge-audit A B --json`

The difference between two rungs is what that piece costs in a whole process; `floor + Σ pieces`
is the command.  The adapters are bench_merge_audit.py's Mistral-7B-shaped r=64 bf16 pair
(generated once under /tmp/lorascope-bench-merge).  Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _child import steal_s, steal_share  # noqa: E402

SRC = HERE.parent / "src"
RUNGS = {
    "audit": ("floor", "start", "imports", "pass", "report", "command"),
    "merge-audit": ("floor", "no-sign", "command"),
}


def rung_command(group: str, rung: str, a: Path, b: Path) -> list[str]:
    py = [sys.executable]
    if rung == "floor":
        return [*py, str(HERE / "_minimal.py"), group, str(a), *([str(b)] if group == "merge-audit" else [])]
    if rung == "start":
        setup = "import os; os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')"  # as _minimal.py
        return [*py, "-c", f"{setup}; import numpy, json, struct, concurrent.futures"]
    if group == "audit" and rung == "command":
        return [*py, "-m", "lorascope", "audit", str(a), "--json"]
    if group == "merge-audit" and rung == "command":
        return [*py, "-m", "lorascope", "merge-audit", str(a), str(b), "--json"]
    return [*py, str(HERE / "_rung.py"), f"{group}:{rung}", str(a), str(b)]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s: user + system of the process and its threads)."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: bytecode cached
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
        )
    return wall, usage.ru_utime + usage.ru_stime


def ladder(group: str, a: Path, b: Path, repeats: int) -> dict:
    cmds = {r: rung_command(group, r, a, b) for r in RUNGS[group]}
    for cmd in cmds.values():  # warm-up: bytecode written, page cache warm
        timed(cmd)
    runs: dict[str, list[tuple[float, float]]] = {r: [] for r in cmds}
    steal0, t0 = steal_s(), time.perf_counter()
    for _ in range(repeats):
        for r, cmd in cmds.items():
            runs[r].append(timed(cmd))
    out = {}
    for r, values in runs.items():
        out[r] = {
            "wall_s": statistics.median(w for w, _ in values),
            "cpu_s": statistics.median(c for _, c in values),
            "walls_s": [round(w, 4) for w, _ in values],
        }
    stolen = steal_share(steal0, t0)
    out["steal_share"] = {"value": round(stolen, 3)}  # of the CPUs' time during the ladder
    if stolen > 0.05:
        print(f"warning: {stolen:.0%} of the CPU time went to other guests: the numbers are unreliable")
    floor = out["floor"]["wall_s"]
    for r in cmds:
        out[r]["over_floor"] = out[r]["wall_s"] / floor
    return out


def decompose(group: str, rows: dict) -> dict[str, tuple[float, float]]:
    """The command's time over the floor, piece by piece: (wall s, CPU s) of each difference."""

    def d(hi: str, lo: str) -> tuple[float, float]:
        return rows[hi]["wall_s"] - rows[lo]["wall_s"], rows[hi]["cpu_s"] - rows[lo]["cpu_s"]

    if group == "merge-audit":
        return {
            "pair pass without the sign grid, over the floor": d("no-sign", "floor"),
            "sign-conflict grid": d("command", "no-sign"),
            "total over the floor": d("command", "floor"),
        }
    startup, floor_work, our_work = d("imports", "start"), d("floor", "start"), d("pass", "imports")
    return {
        "start-up (modules, argparse) over the floor's": startup,
        "load + spectral pass over the floor's work": (
            our_work[0] - floor_work[0],
            our_work[1] - floor_work[1],
        ),
        "report (metrics, summaries)": d("report", "pass"),
        "JSON and output": d("command", "report"),
        "total over the floor": d("command", "floor"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--only", choices=tuple(RUNGS), nargs="+", default=list(RUNGS))
    p.add_argument("--cache", type=Path, default=Path("/tmp/lorascope-bench-merge"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from bench_merge_audit import ensure_pair

    a, b = ensure_pair(args.cache, 32, quick=False)
    results: dict = {"repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)), "ladders": {}}
    for group in args.only:
        rows = ladder(group, a, b, args.repeats)
        results["ladders"][group] = rows
        print(f"{group}:")
        for r in RUNGS[group]:
            row = rows[r]
            wall, cpu, ratio = row["wall_s"], row["cpu_s"], row["over_floor"]
            print(f"  {r:<9} {wall:.3f} s wall  {cpu:.3f} s CPU  {ratio:.2f}× floor")
        print(f"  (the CPUs' time taken by other guests meanwhile: {rows['steal_share']['value']:.0%})")
        results["ladders"][group + "_pieces"] = pieces = decompose(group, rows)
        for piece, (wall, cpu) in pieces.items():
            print(f"    {piece:<46} {wall:+.3f} s wall  {cpu:+.3f} s CPU")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
