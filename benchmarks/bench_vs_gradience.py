"""lorascope against Gradience 0.11, side by side, on two Mistral-7B-shaped r=64 bf16 adapters.

    python benchmarks/bench_vs_gradience.py [--repeats 5] [--busy] [--only audit,compress,merge-audit]
                                            [--gradience /tmp/gradience-venv/bin/gradience] [--json OUT]

Each row times whole processes as users run them (the interpreter start included, bytecode caches
allowed: PYTHONDONTWRITEBYTECODE is removed from the children's environment), page cache warm,
stdout to /dev/null, interleaved: lorascope, minimal, Gradience, lorascope, minimal, Gradience, ...
`--repeats` times; the table gives medians (and best) and the ratio of the medians.

Ceiling: "minimal" is `_minimal.py`, the least work any exact float64-Gram implementation in
Python + numpy does (read the bf16 bytes, widen them block by block, the Gram products, the r×r
eigenvalues, on both cores; compress adds the rank-16 factors and one file write): no validation,
no metrics, no output.  Gradience ÷ minimal is the largest ratio this design can reach on the
machine at that moment; lorascope ÷ minimal is what lorascope's own checks, metrics and reports cost.

| row         | lorascope                                  | Gradience 0.11                               |
|-------------|--------------------------------------------|----------------------------------------------|
| audit       | `lorascope audit A --json -q`              | `gradience audit --peft-dir A --json`        |
| compress    | `lorascope compress A -o OUT --rank 16`    | `gradience truncate --peft-dir A --rank 16 --out-dir OUT --dtype bf16` |
| merge-audit | `lorascope merge-audit A B --json -q`      | `gradience merge-audit --adapter-a A --adapter-b B --json` |

Other guests: each row records the share of the CPUs' time the hypervisor gave other guests while
it ran (`steal_share`, from /proc/stat); above 5 % the line says the row is unreliable.

Unavoidable share: the part of lorascope's wall time that no implementation can skip, measured
in this process on the same data: reading every tensor's bytes from the page cache and the
float64 Gram products of the r×r core (`syrk`, the O((m+n)·r²) flops; for merge-audit the
stacked pair, for compress also writing the output's bytes), each timed single-threaded and
divided by the cores the command uses.  share = that floor / lorascope's median wall time.

`--busy`: the lorascope commands again, interleaved quiet / busy, with two busy-loop processes
(`while True: pass`) started before and killed after each busy run: the ratio busy/quiet.

Gradience is installed away from the project (its requirements pin older stacks):
    python -m venv /tmp/gradience-venv && /tmp/gradience-venv/bin/pip install torch==2.13.0 gradience==0.11.0
The adapters are generated once under /tmp/lorascope-bench-merge/{a,b} (bench_merge_audit.py's pair;
`a` is make_mistral_adapter.write_adapter(seed=0)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _child import ChildFailed, lorascope_cmd, run_child, steal_s, steal_share, warm_cache  # noqa: E402
from bench_merge_audit import DEFAULT_CACHE, ensure_pair  # noqa: E402

DEFAULT_GRADIENCE = Path(tempfile.gettempdir()) / "gradience-venv" / "bin" / "gradience"
COMMANDS = ("audit", "compress", "merge-audit")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def commands(name: str, a: Path, b: Path, out: Path, gradience: Path) -> tuple[list[str], list[str]]:
    ours = lorascope_cmd()
    if name == "audit":
        return (
            [*ours, "audit", str(a), "--json", "-q"],
            [str(gradience), "audit", "--peft-dir", str(a), "--json"],
        )
    if name == "compress":
        return (
            [*ours, "compress", str(a), "-o", str(out / "ours"), "--rank", "16"],
            [str(gradience), "truncate", "--peft-dir", str(a), "--rank", "16", "--out-dir", str(out / "theirs"),
             "--dtype", "bf16"],
        )  # fmt: skip
    return (
        [*ours, "merge-audit", str(a), str(b), "--json", "-q"],
        [str(gradience), "merge-audit", "--adapter-a", str(a), "--adapter-b", str(b), "--json"],
    )


def timed(cmd: list[str], out: Path, timeout: float) -> tuple[float, float]:
    """One run, page cache warm: this machine's memory manager (DAMON reclaim) drops cold file
    pages between runs, so every input is read once just before each timed run."""
    for sub in ("ours", "theirs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "ours.safetensors").unlink(missing_ok=True)
    for arg in cmd:
        weights = Path(arg) / "adapter_model.safetensors"
        if weights.is_file():
            warm_cache(weights)
    return run_child(cmd, env=child_env(), timeout=timeout)


def minimal_cmd(name: str, a: Path, b: Path, out: Path) -> list[str]:
    script = [sys.executable, str(HERE / "_minimal.py"), name]
    if name == "compress":
        return [*script, str(a), str(out / "ours.safetensors")]
    return [*script, str(a), *([str(b)] if name == "merge-audit" else [])]


def interleaved(name: str, a: Path, b: Path, gradience: Path | None, repeats: int, out: Path) -> dict:
    ours_cmd, theirs_cmd = commands(name, a, b, out, gradience or Path("gradience"))
    least_cmd = minimal_cmd(name, a, b, out)
    ours, least, theirs = [], [], []
    steal0, t0 = steal_s(), time.perf_counter()
    for _ in range(repeats):
        ours.append(timed(ours_cmd, out, 600))
        least.append(timed(least_cmd, out, 600))
        if gradience is not None:
            theirs.append(timed(theirs_cmd, out, 600))
    row = {"lorascope": summary(ours), "minimal": summary(least)}
    row["steal_share"] = steal_share(steal0, t0)  # other guests' share of the CPUs meanwhile
    row["overhead_vs_minimal"] = row["lorascope"]["median_s"] / row["minimal"]["median_s"]
    if theirs:
        row["gradience"] = summary(theirs)
        row["ratio_median"] = row["gradience"]["median_s"] / row["lorascope"]["median_s"]
        row["ceiling_ratio"] = row["gradience"]["median_s"] / row["minimal"]["median_s"]
        row["ratio_rss"] = row["gradience"]["peak_rss_mb"] / row["lorascope"]["peak_rss_mb"]
    return row


def summary(runs: list[tuple[float, float]]) -> dict:
    walls = [w for w, _ in runs]
    return {
        "median_s": float(np.median(walls)),
        "best_s": min(walls),
        "walls_s": walls,
        "peak_rss_mb": max(r for _, r in runs),
    }


def busy_ratio(name: str, a: Path, b: Path, repeats: int, out: Path) -> dict:
    cmd, _ = commands(name, a, b, out, Path("gradience"))
    quiet, busy = [], []
    for _ in range(repeats):
        quiet.append(timed(cmd, out, 600)[0])
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            time.sleep(0.3)  # let the loops reach the scheduler
            busy.append(timed(cmd, out, 600)[0])
        finally:
            for p in loops:
                p.kill()
                p.wait()
    q, bz = float(np.median(quiet)), float(np.median(busy))
    return {"quiet_median_s": q, "busy_median_s": bz, "ratio": bz / q, "quiet_s": quiet, "busy_s": busy}


# --- the unavoidable floor --------------------------------------------------------------------


def _best(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor_parts(paths: list[Path], stacked: bool) -> dict[str, float]:
    """Single-threaded seconds: read every tensor's bytes; the float64 Gram products (from factors
    already widened, so only the flops count)."""
    from lorascope.formats import load
    from lorascope.parallel import blas_threads

    adapters = [load(p) for p in paths]

    def read_all() -> None:
        for p in paths:
            with open(Path(p) / "adapter_model.safetensors", "rb", buffering=0) as f:
                buf = bytearray(1 << 24)
                while f.readinto(buf):
                    pass

    gram = 0.0
    with blas_threads(1):
        for infos in zip(*(ad.layers for ad in adapters), strict=True):
            deltas = [ad.loader(i) for ad, i in zip(adapters, infos, strict=True)]
            if stacked:
                xa = np.concatenate([d.down for d in deltas], axis=0, dtype=np.float64)
                xb = np.concatenate([d.up for d in deltas], axis=1).astype(np.float64)
                parts = [(xa, xb)]
            else:
                parts = [(np.asarray(d.down, np.float64), np.asarray(d.up, np.float64)) for d in deltas]
            for xa, xb in parts:
                gram += _best(lambda xa=xa, xb=xb: (xa @ xa.T, xb.T @ xb), 2)
    return {"read_s": _best(read_all), "gram_s": gram}


def floor(name: str, a: Path, b: Path, out: Path) -> dict[str, float]:
    from lorascope.parallel import cores

    parts = floor_parts([a, b] if name == "merge-audit" else [a], stacked=name == "merge-audit")
    if name == "compress":  # the output's bytes must be written too
        size = sum(f.stat().st_size for f in (out / "ours").glob("*")) if (out / "ours").exists() else 0
        blob = os.urandom(1 << 20) * max(1, size >> 20)
        target = out / "floor.bin"
        parts["write_s"] = _best(lambda: target.write_bytes(blob))
        target.unlink()
    parts["floor_s"] = sum(parts.values()) / cores()
    return parts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--only", default=",".join(COMMANDS), help="comma-separated subset of " + ", ".join(COMMANDS)
    )
    p.add_argument("--gradience", type=Path, default=DEFAULT_GRADIENCE, help="gradience 0.11 executable")
    p.add_argument("--no-gradience", action="store_true", help="lorascope only")
    p.add_argument("--busy", action="store_true", help="also quiet vs two busy-loop processes")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in COMMANDS]
    if bad or args.repeats < 1:
        p.error(f"unknown command(s) {bad}" if bad else "--repeats must be ≥ 1")
    gradience = None if args.no_gradience else args.gradience
    if gradience is not None and not gradience.is_file():
        raise ChildFailed(f"{gradience}: not found (install it, see the module docstring, or --no-gradience)")
    a, b = ensure_pair(args.cache, 32, quick=False)
    for x in (a, b):
        warm_cache(x / "adapter_model.safetensors")
    results: dict = {"machine": machine(), "repeats": args.repeats, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="lorascope-bench-") as tmp:
        out = Path(tmp)
        for name in names:
            row = interleaved(name, a, b, gradience, args.repeats, out)
            if name == "compress":  # leave one output for the write floor
                timed(commands(name, a, b, out, Path("gradience"))[0], out, 600)
            row["floor"] = floor(name, a, b, out)
            row["unavoidable_share"] = row["floor"]["floor_s"] / row["lorascope"]["median_s"]
            if args.busy:
                row["busy"] = busy_ratio(name, a, b, args.repeats, out)
            results["rows"][name] = row
            print(line(name, row), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def line(name: str, row: dict) -> str:
    ours = row["lorascope"]
    text = f"{name:<12} lorascope {ours['median_s']:.3f} s (best {ours['best_s']:.3f}, {ours['peak_rss_mb']:.0f} MB)"
    if "gradience" in row:
        g = row["gradience"]
        text += (
            f"  gradience {g['median_s']:.2f} s (best {g['best_s']:.2f}, {g['peak_rss_mb']:.0f} MB)"
            f"  ratio {row['ratio_median']:.1f}× (ceiling {row['ceiling_ratio']:.1f}×)"
        )
    least = row["minimal"]
    text += f"  minimal {least['median_s']:.3f} s (lorascope {row['overhead_vs_minimal']:.2f}× it)"
    text += f"  unavoidable {100 * row['unavoidable_share']:.0f} %"
    if "busy" in row:
        text += f"  busy/quiet {row['busy']['ratio']:.2f}"
    text += f"  other guests {100 * row['steal_share']:.0f} % of the CPUs"
    if row["steal_share"] > 0.05:
        text += " (unreliable)"
    return text


def machine() -> dict:
    from lorascope.parallel import cores

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "python": platform.python_version(),
        "cores": cores(),
        "load_before": load,
        "cpu": platform.processor(),
    }


if __name__ == "__main__":
    sys.exit(main())
