"""Benchmark `audit` on an SDXL-shaped kohya LoRA (UNet + two text encoders, r=32, fp16).

    python benchmarks/bench_formats.py [--workdir DIR] [--rank 32] [--json OUT]

Builds the file sd-scripts' networks.lora would write for SDXL with its default targets
(Transformer2DModel blocks of the UNet, CLIPAttention/CLIPMLP of both text encoders): random
fp16 factors, alpha = r/2, 986 modules.  Measures, in this process:
  1. `lorascope.audit_adapter(path)`: header parse, per-layer load, exact Gram-core spectra, metrics.
  2. The dense baseline: ΔW = s·up@down in float32 and `np.linalg.svd(compute_uv=False)`, timed on
     one layer of each distinct shape and multiplied by how many layers have that shape (running
     all dense SVDs on 2 cores takes far longer than the audit itself).  The dense singular values
     of the timed layers are compared with the audit's (max relative error over σ ≥ 1e-3·σ₁).

Measured on the 2-core dev VM with OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 (both sides on one
thread; with the default threads and other jobs on the VM, OpenBLAS thread contention made the
r×r work 5–25× slower and run-to-run noise dominated): 986 modules, 218 MB fp16 file, audit
0.83 s, dense baseline 591 s extrapolated (12 shapes timed), ratio ≈ 714×, max rel. error of the
audit's σ against the fp32 dense SVD 9.3e-8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

# SDXL UNet transformer blocks per (block, width): down_blocks.1 (2 attn × 2 blocks, 640),
# down_blocks.2 (2 × 10, 1280), mid_block (1 × 10, 1280), up_blocks.0 (3 × 10, 1280),
# up_blocks.1 (3 × 2, 640).
UNET = [("down_blocks_1", 2, 2, 640), ("down_blocks_2", 2, 10, 1280), ("mid_block", 1, 10, 1280),
        ("up_blocks_0", 3, 10, 1280), ("up_blocks_1", 3, 2, 640)]  # fmt: skip
CROSS = 2048  # SDXL cross-attention width (CLIP-L 768 + bigG 1280)


def _unet_modules() -> list[tuple[str, int, int]]:
    mods = []
    for block, n_attn, depth, d in UNET:
        for a in range(n_attn):
            p = f"lora_unet_{block}_attentions_{a}"
            mods += [(f"{p}_proj_in", d, d), (f"{p}_proj_out", d, d)]
            for t in range(depth):
                q = f"{p}_transformer_blocks_{t}"
                for attn, kv_in in (("attn1", d), ("attn2", CROSS)):
                    mods += [(f"{q}_{attn}_to_q", d, d), (f"{q}_{attn}_to_k", d, kv_in)]
                    mods += [(f"{q}_{attn}_to_v", d, kv_in), (f"{q}_{attn}_to_out_0", d, d)]
                mods += [(f"{q}_ff_net_0_proj", 8 * d, d), (f"{q}_ff_net_2", d, 4 * d)]
    return mods  # (name, out, in)


def _te_modules(prefix: str, layers: int, d: int) -> list[tuple[str, int, int]]:
    mods = []
    for i in range(layers):
        p = f"{prefix}_text_model_encoder_layers_{i}"
        mods += [(f"{p}_self_attn_{m}", d, d) for m in ("q_proj", "k_proj", "v_proj", "out_proj")]
        mods += [(f"{p}_mlp_fc1", 4 * d, d), (f"{p}_mlp_fc2", d, 4 * d)]
    return mods


def sdxl_modules() -> list[tuple[str, int, int]]:
    return _unet_modules() + _te_modules("lora_te1", 12, 768) + _te_modules("lora_te2", 32, 1280)


def build(path: Path, rank: int, seed: int = 0) -> list[tuple[str, int, int]]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    mods = sdxl_modules()
    tensors = {}
    for name, out, inn in mods:
        decay = 0.85 ** np.arange(rank)  # a trained-looking decaying spectrum
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, inn)) / np.sqrt(inn)).astype(
            np.float16
        )
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((out, rank)) * decay * 0.01).astype(
            np.float16
        )
        tensors[f"{name}.alpha"] = np.asarray(rank / 2, dtype=np.float16)
    meta = {
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank / 2),
        "ss_base_model_version": "sdxl_base_v1-0",
    }
    save_file(tensors, str(path), metadata=meta)
    return mods


def dense_baseline(path: Path, mods, report) -> dict:
    from lorascope.formats import load

    adapter = load(path)
    sigma = {x.name: x.sigma for x in report.layers}
    counts = Counter((out, inn) for _, out, inn in mods)
    first = {}
    for name, out, inn in mods:
        first.setdefault((out, inn), name)
    total, worst = 0.0, 0.0
    for shape, name in first.items():
        delta = adapter.delta(name)
        t0 = time.perf_counter()
        dense = (
            np.float32(delta.scale) * delta.up.astype(np.float32) @ delta.down.astype(np.float32)
        )  # (out, in)
        s = np.linalg.svd(dense, compute_uv=False)
        dt = time.perf_counter() - t0
        total += dt * counts[shape]
        s = s[: len(sigma[name])]  # (r,) the rest is rounding noise of a rank-r matrix
        keep = s >= 1e-3 * s[0]
        worst = max(worst, float(np.max(np.abs(sigma[name][keep] - s[keep]) / s[keep])))
    return {"dense_seconds_extrapolated": total, "shapes": len(first), "max_rel_err_vs_dense_fp32": worst}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    from lorascope.audit import audit_adapter

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "sdxl_lora.safetensors"
        mods = build(path, args.rank)
        t0 = time.perf_counter()
        report = audit_adapter(path)
        audit_s = time.perf_counter() - t0
        result = {"modules": len(mods), "rank": args.rank, "file_mb": round(path.stat().st_size / 2**20, 1)}
        result["audit_seconds"] = round(audit_s, 3)
        result.update(dense_baseline(path, mods, report))
        result["speedup"] = round(result["dense_seconds_extrapolated"] / audit_s, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
