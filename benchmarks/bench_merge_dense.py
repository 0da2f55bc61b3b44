"""CPU time of `merge --method M` for every dense method, full SVD (before) against the top-k solver.

    python benchmarks/bench_merge_dense.py [--repeats 5] [--layers 24] [--json OUT]

The pair is Qwen2.5-0.5B-shaped, synthesized: 24 blocks × (q_proj 896×896, v_proj 128×896) =
48 layers; adapter A r = 8, adapter B r = 4 (random factors, a decaying spectrum, fp32 PEFT).
For each dense method (ties, dare_ties, dare_linear, magnitude_prune) the whole
`lorascope.merge_files([A, B], out, plan)` is timed in this process (read, merge, write, read-back
check), interleaved before / after, `--repeats` rounds, median CPU time (`time.process_time`: all
threads of this process, so another job's load does not count, BLAS threads spinning do) and wall.
*before* is what the code did until now: numpy's full SVD of the merged ΔW, truncated
(`full_svd_truncation` below), one layer at a time with BLAS on every core, and TIES's sign
election and disjoint merge as they were (`old_disjoint_merge`); *after* is the code
now: `merge.dense.dense_truncated_svd`, and layers of this size on every core, one BLAS thread each.
With LORASCOPE_THREADS=1 both run on one core, one BLAS thread: the work itself, without the
busy-waiting of idle OpenBLAS threads that inflates *before* on a loaded machine.
Each round also checks the two outputs agree: every layer's written ΔW within 1e-6 relative.
Set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before running to fix the BLAS threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lorascope.formats import load
from lorascope.merge import LayerPlan, MergePlan, merge_files
from lorascope.merge import execute as merge_execute
from lorascope.merge import methods as merge_methods
from lorascope.merge.dense import dense_truncated_svd
from lorascope.parallel import cores
from lorascope.spectral import LowRankSVD

METHODS = ("ties", "dare_ties", "dare_linear", "magnitude_prune")
SHAPES = {"q_proj": (896, 896), "v_proj": (128, 896)}  # (out, in) of Qwen2.5-0.5B


def full_svd_truncation(m, rank=None, energy=None, *, seed=0) -> LowRankSVD:
    """The re-factorisation before the top-k solver, for layers with min(out, in) ≤ 1024."""
    u, s, vt = np.linalg.svd(np.asarray(m, np.float64), full_matrices=False)
    k = min(m.shape) if rank is None else min(rank, min(m.shape))
    return LowRankSVD(u, s, vt).truncate(k)


def old_disjoint_merge(xs, w, masks, rescale, majority, normalize, overwrite=False):
    """TIES steps 2-3 as the code did before `overwrite`: v_i recomputed per pass, agreement by
    np.where (kept here as the *before* reference; `overwrite` ignored)."""
    from lorascope.merge.methods import _weighted

    tmp = np.empty(xs[0].shape)
    elect = np.zeros(xs[0].shape)
    for x, wi, mask in zip(xs, w, masks, strict=True):
        v = _weighted(x, wi * rescale, mask, tmp)
        elect += np.sign(v, out=v) if majority == "frequency" else v
    positive = elect >= 0
    out = elect
    out.fill(0.0)
    norm = np.zeros(xs[0].shape) if normalize else None
    for x, wi, mask in zip(xs, w, masks, strict=True):
        v = _weighted(x, wi * rescale, mask, tmp)
        agree = np.where(positive, v > 0, v < 0)
        v *= agree
        out += v
        if norm is not None:
            np.add(norm, abs(wi), out=norm, where=agree)
    if norm is not None:
        np.divide(out, norm, out=out, where=norm > 0)
    return out


def write_adapter(dest: Path, rank: int, seed: int, blocks: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(blocks):
        for mod, (out, inn) in SHAPES.items():
            key = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            decay = 0.8 ** np.arange(rank)
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, inn)) / np.sqrt(inn)).astype(
                np.float32
            )
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out, rank)) * decay * 0.02).astype(
                np.float32
            )
    dest.mkdir(parents=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(SHAPES),
              "base_model_name_or_path": "Qwen/Qwen2.5-0.5B", "task_type": "CAUSAL_LM"}  # fmt: skip
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def timed(adapters, dest: Path, method: str, before: bool) -> tuple[float, float]:
    parallel, disjoint = merge_execute._DENSE_PARALLEL, merge_methods._disjoint_merge
    if before:  # the code until now: full SVD, one layer at a time, the old TIES disjoint merge
        merge_execute.dense_truncated_svd, merge_execute._DENSE_PARALLEL = full_svd_truncation, 0
        merge_methods._disjoint_merge = old_disjoint_merge
    try:
        c0, w0 = time.process_time(), time.perf_counter()
        merge_files(adapters, dest, MergePlan((1.0, 1.0), LayerPlan(method)))
        return time.process_time() - c0, time.perf_counter() - w0
    finally:
        merge_execute.dense_truncated_svd, merge_execute._DENSE_PARALLEL = dense_truncated_svd, parallel
        merge_methods._disjoint_merge = disjoint


def max_difference(before: Path, after: Path) -> float:
    a, b = load(before), load(after)
    worst = 0.0
    for name in a.names:
        x, y = a.delta(name).dense(), b.delta(name).dense()
        worst = max(worst, float(np.linalg.norm(x - y) / np.linalg.norm(x)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=24, help="transformer blocks (q and v each)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = [
            load(write_adapter(work / "a", 8, 0, args.layers)),
            load(write_adapter(work / "b", 4, 1, args.layers)),
        ]
        rows = {}
        for method in args.methods.split(","):
            runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            diff = 0.0
            for r in range(args.repeats):  # interleaved: before, after, before, after, ...
                for label in ("before", "after"):
                    runs[label].append(
                        timed(adapters, work / f"{method}-{label}-{r}", method, label == "before")
                    )
                diff = max(diff, max_difference(work / f"{method}-before-{r}", work / f"{method}-after-{r}"))
            cpu = {k: statistics.median(c for c, _ in v) for k, v in runs.items()}
            wall = {k: statistics.median(w for _, w in v) for k, v in runs.items()}
            rows[method] = {"cpu_s": cpu, "wall_s": wall, "cpu_ratio": cpu["after"] / cpu["before"],
                            "max_rel_difference": diff, "runs": runs}  # fmt: skip
            print(f"{method:<16} CPU before {cpu['before']:7.2f} s  after {cpu['after']:6.2f} s  "
                  f"({100 * cpu['after'] / cpu['before']:5.1f} %)   wall {wall['before']:6.2f} → "
                  f"{wall['after']:5.2f} s   max ΔW difference {diff:.1e}", flush=True)  # fmt: skip
    if args.json:
        env = {k: os.environ.get(k) for k in ("LORASCOPE_THREADS", "OPENBLAS_NUM_THREADS")}
        doc = {
            "layers": 2 * args.layers,
            "repeats": args.repeats,
            "cores": cores(),
            "env": env,
            "methods": rows,
        }
        args.json.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
