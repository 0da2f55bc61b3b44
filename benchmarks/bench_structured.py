"""Audit time and peak memory on small files with large structured or over-ranked layers.

    PYTHONPATH=src python benchmarks/bench_structured.py [--src DIR] [--timeout S] [--json OUT]

Cases (all built here, seeded):
* lokr_16x256: one LoKr layer, lokr_w1 (16, 16) ⊗ lokr_w2 (256, 256), fp32 (263 KB), ΔW 4096×4096;
* lokr_37kb: one LoKr layer, lokr_w1 (96, 96) ⊗ lokr_w2 (96, 96), fp16 (37 KB), ΔW 9216×9216;
* loha_r64: one LoHa layer, r = 64 per side on 512×512 (rank ≤ 4096 > 512), fp32;
* rank_6000: a PEFT adapter with r = 6000 on two 2×2 layers, fp32 (192 KB);
* huge_1e200: a PEFT layer whose float64 factors hold values ~1e200 (down) and ~1e-200 (up):
  ΔW is of order 1, but each Gram over- or underflows.

Each case runs `audit_adapter` in a fresh process (`--src` picks the lorascope source tree, e.g.
another checkout, to compare) and reports its wall time (imports excluded), the process's peak
RSS and σ₁; a run past `--timeout` is reported as such.  `truth_sigma1` is σ₁ from a dense
float64 SVD (from the sides for LoKr).
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_TAGS = {"fp16": ("F16", np.float16), "fp32": ("F32", np.float32), "fp64": ("F64", np.float64)}

CHILD = r"""
import json, resource, sys, time
from lorascope.audit import audit_adapter
t = time.perf_counter()
report = audit_adapter(sys.argv[1])
wall = time.perf_counter() - t
sigma = max(float(x.sigma[0]) for x in report.layers)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mb": rss, "sigma1": sigma}))
"""


def write_safetensors(path: Path, tensors: dict[str, tuple[np.ndarray, str]]) -> Path:
    header, chunks, offset = {}, [], 0
    for key, (arr, dtype) in tensors.items():
        tag, np_type = _TAGS[dtype]
        data = np.ascontiguousarray(arr, dtype=np_type).tobytes()
        header[key] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))
    return path


def write_peft(d: Path, layers: dict[str, tuple[np.ndarray, np.ndarray]], r: int, dtype: str) -> Path:
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": r}))
    tensors = {}
    for name, (a, b) in layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = (a, dtype)
        tensors[f"base_model.model.{name}.lora_B.weight"] = (b, dtype)
    write_safetensors(d / "adapter_model.safetensors", tensors)
    return d


def build(root: Path) -> dict[str, tuple[Path, float | None]]:
    """{case: (path, dense σ₁ or None when the dense SVD is too large here)}."""
    rng = np.random.default_rng(0)
    cases: dict[str, tuple[Path, float | None]] = {}
    w1, w2 = rng.standard_normal((16, 16)), rng.standard_normal((256, 256))
    w1, w2 = w1.astype(np.float32).astype(np.float64), w2.astype(np.float32).astype(np.float64)
    path = write_safetensors(
        root / "lokr_16x256.safetensors",
        {"lycoris_fc.lokr_w1": (w1, "fp32"), "lycoris_fc.lokr_w2": (w2, "fp32")},
    )
    truth = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2)  # σ₁(W1 ⊗ W2) = σ₁(W1)·σ₁(W2)
    cases["lokr_16x256"] = (path, float(truth))
    v1, v2 = (rng.standard_normal((96, 96)).astype(np.float16) for _ in range(2))
    path = write_safetensors(
        root / "lokr_37kb.safetensors",
        {"lycoris_fc.lokr_w1": (v1, "fp16"), "lycoris_fc.lokr_w2": (v2, "fp16")},
    )
    cases["lokr_37kb"] = (
        path,
        float(np.linalg.norm(v1.astype(float), 2) * np.linalg.norm(v2.astype(float), 2)),
    )
    loha = {
        f"lycoris_fc.hada_w{n}_{s}": (rng.standard_normal(shape).astype(np.float32), "fp32")
        for n in (1, 2)
        for s, shape in (("a", (512, 64)), ("b", (64, 512)))
    }
    path = write_safetensors(root / "loha_r64.safetensors", loha)
    f = {k: v[0].astype(np.float64) for k, v in loha.items()}
    dense = (f["lycoris_fc.hada_w1_a"] @ f["lycoris_fc.hada_w1_b"]) * (
        f["lycoris_fc.hada_w2_a"] @ f["lycoris_fc.hada_w2_b"]
    )
    cases["loha_r64"] = (path, float(np.linalg.norm(dense, 2)))
    layers = {
        f"model.layers.{i}.q_proj": (rng.standard_normal((6000, 2)), rng.standard_normal((2, 6000)))
        for i in range(2)
    }
    layers = {k: (a.astype(np.float32), b.astype(np.float32)) for k, (a, b) in layers.items()}
    path = write_peft(root / "rank_6000", layers, 6000, "fp32")
    cases["rank_6000"] = (
        path,
        max(float(np.linalg.norm(b.astype(float) @ a.astype(float), 2)) for a, b in layers.values()),
    )
    a, b = rng.standard_normal((4, 32)) * 1e200, rng.standard_normal((24, 4)) * 1e-200
    path = write_peft(root / "huge_1e200", {"model.layers.0.q_proj": (a, b)}, 4, "fp64")
    cases["huge_1e200"] = (path, float(np.linalg.norm(b @ a, 2)))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", help="LORASCOPE_THREADS for the child (e.g. 1 on a shared, busy machine)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, truth) in build(Path(tmp)).items():
            size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
            env = {"PYTHONPATH": args.src, "PATH": "/usr/bin:/bin"}
            if args.threads:
                env["LORASCOPE_THREADS"] = args.threads
            try:
                run = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                row = json.loads(run.stdout) if run.returncode == 0 else {"error": run.stderr.strip()[-300:]}
            except subprocess.TimeoutExpired:
                row = {"error": f"timed out after {args.timeout:g} s"}
            row.update(file_kb=round(size / 1024, 1), truth_sigma1=truth)
            results[name] = row
            print(name, json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
