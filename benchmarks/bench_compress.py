"""Benchmark `lorascope compress` on a Mistral-7B-shaped r=64 bf16 adapter (224 layers).

    python benchmarks/bench_compress.py [--workdir DIR] [--layers 32] [--json OUT]

Measures, each in a fresh process (wall time from spawn to exit, peak RSS of that process):
  1. `lorascope compress ADAPTER -o OUT --rank 16`
  2. `lorascope compress ADAPTER -o OUT --energy 0.9`
  3. the dense baseline: ΔW = s·B@A in float32, `np.linalg.svd(full_matrices=False)`, keep 16,
     on one layer of each shape (k_proj 1024×4096, q_proj 4096×4096).  The whole-adapter time is
     extrapolated per layer with the LAPACK cost model t ∝ m·n·min(m, n) from the measured
     q_proj time (gate/up/down 14336×4096 cost 3.5× a q_proj); running all 224 dense SVDs on 2
     cores would take tens of minutes.  Its peak RSS is the measured q_proj process plus the
     extra dense buffers of one 14336×4096 layer (ΔW, U: 2 × 235 MB in fp32).
The adapter comes from benchmarks/make_mistral_adapter.py (random factors, decaying spectra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHAPES = {
    "q_proj": (4096, 4096),
    "k_proj": (1024, 4096),
    "v_proj": (1024, 4096),
    "o_proj": (4096, 4096),
    "gate_proj": (14336, 4096),
    "up_proj": (14336, 4096),
    "down_proj": (4096, 14336),
}  # (out, in)

# Runs a command in a child and reports (wall seconds, child peak RSS in MB) as JSON: a fresh
# measuring process per command, so RUSAGE_CHILDREN holds that one command's peak only.
_MEASURE = textwrap.dedent(
    """
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": r.returncode, "wall_s": wall, "peak_rss_mb": rss, "stdout": r.stdout}))
    """
)

_DENSE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from lorascope import load
    ad = load(sys.argv[1])
    out = {}
    for name in sys.argv[2:]:
        d = ad.delta(name)
        t = time.perf_counter()
        dense = (d.scale * (d.up.astype(np.float32) @ d.down.astype(np.float32)))  # (out, in) fp32
        u, s, vt = np.linalg.svd(dense, full_matrices=False)
        up, down = u[:, :16] * s[:16], vt[:16]  # (out, 16), (16, in)
        out[name] = time.perf_counter() - t
    print(json.dumps(out))
    """
)


def measure(cmd: list[str], env: dict | None = None) -> dict:
    env = {**os.environ, **(env or {})}
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, check=True, env=env
    )
    data = json.loads(res.stdout)
    if data["rc"] != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return data


def dense_baseline(adapter: Path, n_layers: int) -> dict:
    names = ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj"]
    m = measure([sys.executable, "-c", _DENSE, str(adapter), *names])
    per = json.loads(m["stdout"])
    t_q = per[names[1]]
    flops = {k: o * i * min(o, i) for k, (o, i) in SHAPES.items()}
    per_block = sum(t_q * f / flops["q_proj"] for f in flops.values())
    return {
        "measured_s": per,
        "process_wall_s_two_layers": m["wall_s"],
        "estimated_total_s": per_block * n_layers,
        "estimated_peak_rss_mb": m["peak_rss_mb"] + 2 * 14336 * 4096 * 4 / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="where to put the adapter (default: a temp dir)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lorascope-bench-"))
    adapter = work / "mistral-r64"
    if not (adapter / "adapter_config.json").is_file():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "make_mistral_adapter.py"),
                str(adapter),
                "--layers",
                str(args.layers),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    results = {}
    # OpenBLAS threads: default, and 1 (many small r×r / thin BLAS calls; threads mostly add overhead,
    # badly so when other processes share the cores)
    runs = [
        (f"{label}{tag}", flags, env)
        for label, flags in (("rank16", ["--rank", "16"]), ("energy0.9", ["--energy", "0.9"]))
        for tag, env in (("", None), ("/1thread", ONE_THREAD))
    ]
    for label, flags, env in runs:
        out = work / "out"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, "-m", "lorascope", "compress", str(adapter), "-o", str(out), "--json", *flags]
        results[label] = r = measure(cmd, env)
        summary = json.loads(r.pop("stdout"))["summary"]
        r.update({k: summary[k] for k in ("new_params", "kept_energy", "rel_frobenius_error")})
    results["dense_svd"] = dense_baseline(adapter, args.layers)
    d = results["dense_svd"]
    for label, _, _ in runs:
        r = results[label]
        print(
            f"compress {label:<18} wall {r['wall_s']:6.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB   "
            f"kept energy {r['kept_energy']:.3f}   params {r['new_params']:,}   "
            f"dense/ours time ×{d['estimated_total_s'] / r['wall_s']:.0f}"
        )
    print(
        f"dense SVD (extrapolated) {d['estimated_total_s']:7.1f} s   "
        f"peak RSS ≈ {d['estimated_peak_rss_mb']:.0f} MB  "
        f"(measured q_proj {d['measured_s']['model.layers.0.self_attn.q_proj']:.2f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
