"""extract and verify-merge on a Llama-7B-shaped checkpoint streamed from disk.

    nice python benchmarks/bench_extract.py --dir /tmp/bench-extract [--layers 2] [--rank 16]

Builds (once) BASE and TUNED in bf16, one shard per decoder layer plus model.safetensors.index.json:
each decoder layer has Llama-7B's seven projections (q/k/v/o 4096×4096, gate/up 11008×4096, down
4096×11008) and two RMSNorm vectors; TUNED = bf16(BASE + s·B·A) with a rank-16 PEFT adapter (fp16
factors, α = 32) written beside them.  2 layers are 0.81 GB per checkpoint.  Then, page cache warm:

* reading the bytes once: `cat` of both checkpoints to /dev/null, and a numpy read of every tensor
  through lorascope's reader (bf16 widened to float32);
* `lorascope extract BASE TUNED --rank R` and `lorascope verify-merge BASE ADAPTER TUNED`, each a whole
  process: wall time, CPU time and peak RSS (wait4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lorascope.formats import open_safetensors, write_safetensors_typed  # noqa: E402
from lorascope.types import round_to_dtype  # noqa: E402

HIDDEN, FFN = 4096, 11008
PROJ = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN),
}  # fmt: skip
ALPHA = 32


def build(folder: Path, layers: int, rank: int) -> None:
    if (folder / "tuned" / "model.safetensors.index.json").exists():
        return
    rng = np.random.default_rng(0)
    for sub in ("base", "tuned", "adapter"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    s = ALPHA / rank
    factors, maps = {}, {"base": {}, "tuned": {}}
    for i in range(layers):
        shard = f"model-{i + 1:05d}-of-{layers:05d}.safetensors"
        base, tuned = {}, {}
        for name, (m, n) in PROJ.items():
            key = f"model.layers.{i}.{name}"
            w = round_to_dtype(rng.standard_normal((m, n), dtype=np.float32) * 0.02, "bf16")  # (m, n)
            down = round_to_dtype(rng.standard_normal((rank, n)) / np.sqrt(n), "fp16")  # (r, n)
            up = round_to_dtype(
                rng.standard_normal((m, rank)) * (0.03 * 0.02 * np.sqrt(m) / (s * np.sqrt(rank))), "fp16"
            )
            base[key + ".weight"] = (w, "bf16")
            tuned[key + ".weight"] = (
                round_to_dtype(w + (s * up.astype(np.float32)) @ down.astype(np.float32), "bf16"),
                "bf16",
            )
            factors[f"base_model.model.{key}.lora_A.weight"] = (down, "fp16")
            factors[f"base_model.model.{key}.lora_B.weight"] = (up, "fp16")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            v = (np.ones(HIDDEN, np.float32), "bf16")
            base[f"model.layers.{i}.{norm}.weight"] = tuned[f"model.layers.{i}.{norm}.weight"] = v
        for which, tensors in (("base", base), ("tuned", tuned)):
            write_safetensors_typed(folder / which / shard, tensors, {"format": "pt"})
            maps[which].update(dict.fromkeys(tensors, shard))
    for which in ("base", "tuned"):
        index = {"metadata": {}, "weight_map": maps[which]}
        (folder / which / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": ALPHA,
        "target_modules": sorted({k.split(".")[-1] for k in PROJ}),
    }
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    write_safetensors_typed(folder / "adapter" / "adapter_model.safetensors", factors)


def timed(cmd: list[str]) -> dict:
    """Wall, CPU (user + sys) and peak RSS of one process, from GNU time (os.wait4 on a child of
    this large process would report this process's RSS: Linux carries it into the child)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stats, out, err = Path(tmp) / "time", Path(tmp) / "out", Path(tmp) / "err"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        with open(out, "wb") as o, open(err, "wb") as e:
            t0 = time.perf_counter()
            rc = subprocess.call(
                ["/usr/bin/time", "-f", "%U %S %M", "-o", str(stats), *cmd], stdout=o, stderr=e, env=env
            )
            wall = time.perf_counter() - t0
        user, system, rss_kb = stats.read_text().split()[-3:]
        return {"wall_s": wall, "cpu_s": float(user) + float(system), "peak_rss_mb": int(rss_kb) / 1024,
                "rc": rc, "stdout": out.read_text(), "stderr": err.read_text()[-500:]}  # fmt: skip


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/bench-extract")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    folder = Path(args.dir)
    build(folder, args.layers, args.rank)
    files = shards(folder / "base") + shards(folder / "tuned")
    nbytes = sum(f.stat().st_size for f in files)
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    cat_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for f in files:
        src = open_safetensors(f)
        for key in src.keys():
            src.get(key)
    numpy_s = time.perf_counter() - t0
    out = folder / f"extracted-{time.time_ns()}"
    py = [sys.executable, "-m", "lorascope"]
    ex = timed(
        [
            *py,
            "extract",
            str(folder / "base"),
            str(folder / "tuned"),
            "-o",
            str(out),
            "--rank",
            str(args.rank),
            "--json",
            "-q",
        ]
    )
    ve = timed(
        [
            *py,
            "verify-merge",
            str(folder / "base"),
            str(folder / "adapter"),
            str(folder / "tuned"),
            "--json",
            "-q",
        ]
    )
    ex_doc, ve_doc = json.loads(ex.pop("stdout") or "{}"), json.loads(ve.pop("stdout") or "{}")
    ex_layers, ve_layers = ex_doc.get("layers", []), ve_doc.get("layers", [])
    result = {
        "checkpoint_bytes": nbytes,
        "decoder_layers": args.layers,
        "rank": args.rank,
        "cat_s": cat_s,
        "numpy_read_s": numpy_s,
        "extract": {**ex, "summary": ex_doc.get("summary"),
                    "solvers": sorted({x["solver"] for x in ex_layers})},
        "verify": {**ve, "summary": ve_doc.get("summary"),
                   "max_rel_error": max((x["rel_error"] for x in ve_layers), default=None),
                   "max_k_resolution": max((x["k_resolution"] for x in ve_layers), default=None)},
    }  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
