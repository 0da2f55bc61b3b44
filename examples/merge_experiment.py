"""Merge experiment: `lorascope merge-audit` predictions against accuracy measured after merges.

    python examples/merge_experiment.py [--threads 2] [--out examples/results/merge_experiment.json]

Three pairs, the first adapter always examples/minilm-rt-r64 (task "sentiment", r=64):
  source  : + examples/minilm-src-r16   (task "source", unrelated labels on the same corpus)
  same    : + examples/minilm-rt-r16-s1 (task "sentiment" again, other seed and rank)
  flip    : + examples/minilm-flip-r16  (task "sentiment_flip", the same texts with inverted labels)
For each pair: `lorascope merge-audit FIRST SECOND --json --plan plan.json`, then `lorascope merge`
with --method linear (weights 1,1), --method ties (density 0.8, default rank), --plan plan.json (the
recommendation); also --method linear --weights 0.5,0.5 (the average, as in model soups) and --method
ties --rank 384 (TIES without the re-factorisation loss), and for the flip pair --method dare_ties
(density 0.8, seed 0).  Every merged adapter is scored on both tasks' held-out splits with
examples/evaluate.py.

Classifier heads: `merge` copies modules_to_save (the classifier) from adapter 1.  To score task 2, a
temporary copy of the merged folder gets adapter 2's classifier tensors instead (same keys, same
dtype).  References: each adapter alone on its own task, adapter 1's LoRA with adapter 2's head on
task 2 ("what task 2 gets without adapter 2's LoRA") and, symmetrically, adapter 2's LoRA with adapter
1's head on task 1.  For the flip pair (same texts, inverted labels) each merge is also scored on
task 2 with head 1, i.e. the merged file as written: that accuracy is 1 − its task-1 accuracy
(measured for the linear merge, derived for the others).
The merged folders live in a temporary directory and are deleted.  The lorascope CLI runs in a
subprocess (the commands are recorded as run).

Writes the numbers to --out (JSON) and prints Markdown tables.  ~12 min on 2 idle CPU cores (use
--threads 1 when the machine is shared).
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
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from data import load_task  # noqa: E402
from evaluate import evaluate  # noqa: E402  (sets HF offline env)

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' is_gradient_checkpointing notice

FIRST = ("examples/minilm-rt-r64", "sentiment")
PAIRS = (  # (pair id, second adapter, its task, extra merge methods)
    ("source", "examples/minilm-src-r16", "source", ()),
    ("same", "examples/minilm-rt-r16-s1", "sentiment", ()),
    ("flip", "examples/minilm-flip-r16", "sentiment_flip", ("dare_ties",)),
)
MERGES = {  # name → CLI arguments after `-o OUT`; {plan} is filled in per pair
    "linear": ["--method", "linear", "--weights", "1,1"],
    "linear_avg": ["--method", "linear", "--weights", "0.5,0.5"],  # the average ("model soup")
    "ties": ["--method", "ties", "--density", "0.8"],  # re-factorised to the default rank Σ rᵢ = 80
    "ties_fullrank": ["--method", "ties", "--density", "0.8", "--rank", "384"],  # no truncation
    "recommended": ["--plan", "{plan}"],
    "dare_ties": ["--method", "dare_ties", "--density", "0.8", "--seed", "0"],
}
BASE_MERGES = ("linear", "linear_avg", "ties", "ties_fullrank", "recommended")
WEIGHTS = "adapter_model.safetensors"


def lorascope_exe() -> str:
    exe = Path(sys.executable).with_name("lorascope")
    return str(exe) if exe.is_file() else "lorascope"


def run_cli(args: list[str]) -> dict:
    """Run `lorascope ARGS` (JSON on stdout) with numpy on one thread; returns the parsed report."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([lorascope_exe(), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"lorascope {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def swap_head(merged: Path, donor: Path, dest: Path) -> list[str]:
    """Copy `merged` to `dest` with the classifier tensors taken from `donor`; returns the swapped keys."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    shutil.copytree(merged, dest)
    tensors = load_file(str(merged / WEIGHTS))
    other = load_file(str(donor / WEIGHTS))
    keys = sorted(k for k in tensors if "classifier" in k)
    if not keys or keys != sorted(k for k in other if "classifier" in k):
        raise RuntimeError(
            f"classifier keys differ: {keys} vs {sorted(k for k in other if 'classifier' in k)}"
        )
    for k in keys:
        if other[k].shape != tensors[k].shape:
            raise RuntimeError(f"{k}: shape {other[k].shape} vs {tensors[k].shape}")
        tensors[k] = np.ascontiguousarray(other[k].astype(tensors[k].dtype))  # same dtype as the file
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "pt"})
    return keys


def score(adapter: Path, task: str, log: str) -> float:
    t0 = time.time()
    acc = evaluate(adapter, task=task)
    print(f"  {log:<46} {task:<15} acc {acc:.4f}  ({time.time() - t0:.0f}s)", flush=True)
    return round(acc, 4)


def audit_summary(audit: dict) -> dict:
    s = audit["summary"]
    layers = audit["layers"]
    plan_methods: dict[str, int] = {}
    for lp in audit["plan"]["layers"].values():
        plan_methods[lp["method"]] = plan_methods.get(lp["method"], 0) + 1
    return {
        "verdicts": s["verdicts"],
        "overall": s["overall"],
        "weighted_overlap_excess": round(s["weighted_overlap_excess"], 4),
        "weighted_cosine": round(s["weighted_cosine"], 4),
        "weighted_agreement": round(s["weighted_agreement"], 4),
        "total_norms": [round(x, 4) for x in s["total_norms"]],
        "plan_methods": plan_methods,
        "per_layer": {
            x["name"]: {
                "verdict": x["verdict"],
                "overlap_excess": round(x["overlap_excess"], 4),
                "cosine": round(x["cosine"], 4),
                "agreement": round(x["agreement"], 4),
                "imbalance": round(x["imbalance"], 3),
                "conflict_share": round(x["conflict_share"], 3),
                "recommended": x["recommendation"]["method"],
            }
            for x in layers
        },
    }


def run_pair(pid: str, second: str, task2: str, extra: tuple[str, ...], tmp: Path, base: dict) -> dict:
    first, task1 = FIRST
    print(f"\n== pair {pid}: {first} ({task1}) + {second} ({task2})", flush=True)
    pdir = tmp / pid
    pdir.mkdir()
    plan = pdir / "plan.json"
    audit_args = ["merge-audit", first, second, "--json", "--plan", str(plan), "-q"]
    audit = run_cli(audit_args)
    summ = audit_summary(audit)
    print(
        f"  merge-audit: {summ['overall']} {summ['verdicts']}  plan methods {summ['plan_methods']}",
        flush=True,
    )
    out: dict = {
        "first": first,
        "task1": task1,
        "second": second,
        "task2": task2,
        "audit_command": "lorascope " + " ".join(audit_args[:-1]).replace(str(plan), "plan.json"),
        "audit": summ,
        "alone": {"task1": base[first], "task2": None},
        "first_lora_with_second_head_on_task2": None,
        "second_lora_with_first_head_on_task1": None,
        "merges": {},
    }
    out["alone"]["task2"] = base.get(second) or score(ROOT / second, task2, f"{Path(second).name} alone")
    ref = pdir / "first_with_second_head"
    swap_head(ROOT / first, ROOT / second, ref)
    out["first_lora_with_second_head_on_task2"] = score(ref, task2, f"{Path(first).name} LoRA + task-2 head")
    shutil.rmtree(ref)
    ref = pdir / "second_with_first_head"
    swap_head(ROOT / second, ROOT / first, ref)
    out["second_lora_with_first_head_on_task1"] = score(ref, task1, f"{Path(second).name} LoRA + task-1 head")
    shutil.rmtree(ref)
    same_texts = load_task(task1).test_texts == load_task(task2).test_texts
    for name in (*BASE_MERGES, *extra):
        margs = MERGES[name]
        merged = pdir / f"merged_{name}"
        margs = [a.replace("{plan}", str(plan)) for a in margs]
        args = ["merge", first, second, "-o", str(merged), *margs, "--json", "-q"]
        t0 = time.time()
        report = run_cli(args)
        ms = report["summary"]
        print(
            f"  merge {name}: methods {ms['methods']} ranks {ms['ranks']} "
            f"max rel error {ms['max_rel_error']:.2e} verified {ms['verified']} ({time.time() - t0:.1f}s)",
            flush=True,
        )
        acc1 = score(merged, task1, f"merged {name} (head 1)")
        swapped = pdir / f"merged_{name}_head2"
        swap_head(merged, ROOT / second, swapped)
        acc2 = score(swapped, task2, f"merged {name} (head 2)")
        # same texts, inverted labels (flip pair): the merged file as written (head 1) on task 2 scores
        # 1 − acc1 by construction; measured once (linear) as a check, derived for the others
        acc2_h1 = None
        if same_texts and task2 != task1:
            if name == "linear":
                acc2_h1 = score(merged, task2, f"merged {name} (head 1)")
                assert abs(acc1 + acc2_h1 - 1) < 1e-3, (acc1, acc2_h1)
            else:
                acc2_h1 = round(1 - acc1, 4)
        shown = " ".join(args[:-1]).replace(str(merged), "OUT").replace(str(plan), "plan.json")
        out["merges"][name] = {
            "command": "lorascope " + shown,
            "methods": ms["methods"],
            "ranks": ms["ranks"],
            "max_rel_error": ms["max_rel_error"],
            "mean_rel_error": ms["mean_rel_error"],
            "verified": ms["verified"],
            "notes": report.get("notes", []),
            "task1": acc1,
            "task2": acc2,
            "task2_with_head1": acc2_h1,
        }
        shutil.rmtree(merged), shutil.rmtree(swapped)
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import version

    pkgs = ("lorascope", "numpy", "torch", "transformers", "peft", "safetensors")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def markdown(res: dict) -> str:
    lines = [
        "| pair (second adapter) | verdicts S/R/I/C | overall | w. overlap excess | w. cosine | w. agreement "
        "| plan |",
        "|---|---|---|---|---|---|---|",
    ]
    for pid, p in res["pairs"].items():
        a = p["audit"]
        v = a["verdicts"]
        plan = ", ".join(f"{k} ×{n}" for k, n in a["plan_methods"].items())
        lines.append(
            f"| {pid} ({Path(p['second']).name}, {p['task2']}) | {v['SAFE']}/{v['REDUNDANT']}/"
            f"{v['IMBALANCED']}/{v['CONFLICTING']} | {a['overall']} | {a['weighted_overlap_excess']:.3f} | "
            f"{a['weighted_cosine']:.3f} | {a['weighted_agreement']:.3f} | {plan} |"
        )
    lines += [
        "",
        "Accuracy (%) on the held-out splits; task 1 = sentiment (1,941 ex.), task 2 = the second task "
        "(source: 315 ex.; sentiment / sentiment_flip: 1,941 ex.).",
        "",
        "| pair | adapter(s) | task 1 | task 2 | max rel error |",
        "|---|---|---|---|---|",
    ]
    for pid, p in res["pairs"].items():
        lines.append(f"| {pid} | each alone | {pct(p['alone']['task1'])} | {pct(p['alone']['task2'])} | — |")
        lines.append(
            f"| {pid} | adapter 1 LoRA only (head 2 for task 2) | — | "
            f"{pct(p['first_lora_with_second_head_on_task2'])} | — |"
        )
        lines.append(
            f"| {pid} | adapter 2 LoRA only (head 1 for task 1) | "
            f"{pct(p['second_lora_with_first_head_on_task1'])} | — | — |"
        )
        for name, m in p["merges"].items():
            t2 = pct(m["task2"]) + (
                "" if m["task2_with_head1"] is None else f" (head 1: {pct(m['task2_with_head1'])})"
            )
            lines.append(f"| {pid} | merge {name} | {pct(m['task1'])} | {t2} | {m['max_rel_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "merge_experiment.json")
    ap.add_argument(
        "--pairs", default=",".join(p[0] for p in PAIRS), help="subset of pair ids, comma-separated"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-load "Loading weights" bar
    wanted = [p for p in args.pairs.split(",") if p]
    t0 = time.time()
    print(f"baseline: {FIRST[0]} alone", flush=True)
    base = {FIRST[0]: score(ROOT / FIRST[0], FIRST[1], f"{Path(FIRST[0]).name} alone")}
    res: dict = {"schema": "lorascope-example.merge_experiment/v1", "pairs": {}}
    with tempfile.TemporaryDirectory(prefix="merge_experiment_") as tmp:
        for pid, second, task2, extra in PAIRS:
            if pid in wanted:
                res["pairs"][pid] = run_pair(pid, second, task2, extra, Path(tmp), base)
    res["seconds"] = round(time.time() - t0, 1)
    res["threads"] = args.threads
    res["versions"] = versions()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + markdown(res))
    print(f"\nwrote {args.out}  ({res['seconds']:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
