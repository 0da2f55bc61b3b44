"""Write a Mistral-7B-shaped PEFT LoRA adapter (bf16) for the audit benchmark.

    python benchmarks/make_mistral_adapter.py OUT_DIR [--layers 32] [--rank 64] [--seed 0]

OUT_DIR gets adapter_config.json + adapter_model.safetensors.  Full size: 32 decoder layers ×
{q,k,v,o,gate,up,down}_proj, r = 64, bf16, 167.8 M parameters = 335.5 MB of tensor data.

Shapes (out × in, as in Mistral-7B-v0.1: hidden 4096, 8 KV heads × 128, MLP 14336):
    q_proj, o_proj  4096 × 4096      k_proj, v_proj  1024 × 4096
    gate_proj, up_proj  14336 × 4096  down_proj  4096 × 14336
so lora_A is (r, in) and lora_B is (out, r).

The factors are random but give every layer a decaying spectrum, so the audit has something to find:
    A = diag(d) · G_A / √in,  B = G_B · 0.02,   dᵢ = exp(-i / t_layer)   (G_* standard normal)
with t_layer between 4 and 24 depending on the module and depth, so energy ranks differ per layer.
Deterministic: one numpy Generator per tensor, seeded from (seed, tensor index).

The safetensors file is written by hand (numpy only, no torch): an 8-byte little-endian header
length, a JSON header padded with spaces to a multiple of 8 bytes, then the tensors back to back in
header order.  numpy has no bfloat16, so float32 values are rounded to bf16 (round to nearest even)
on their uint32 bit patterns and the high 16 bits are stored.  The file is checked with the
`safetensors` library's own parser at the end.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

HIDDEN, KV, MLP = 4096, 1024, 14336
# module -> (attention/mlp block, out_features, in_features)
MODULES = {
    "q_proj": ("self_attn", HIDDEN, HIDDEN),
    "k_proj": ("self_attn", KV, HIDDEN),
    "v_proj": ("self_attn", KV, HIDDEN),
    "o_proj": ("self_attn", HIDDEN, HIDDEN),
    "gate_proj": ("mlp", MLP, HIDDEN),
    "up_proj": ("mlp", MLP, HIDDEN),
    "down_proj": ("mlp", HIDDEN, MLP),
}
PREFIX = "base_model.model.model.layers"


def tensor_specs(n_layers: int, rank: int) -> list[tuple[str, tuple[int, int], float]]:
    """(key, shape, decay length t) for every tensor, in file order (sorted by key, like safetensors)."""
    specs = []
    for i in range(n_layers):
        for j, (name, (block, out, inn)) in enumerate(MODULES.items()):
            t = 4.0 + 20.0 * ((i * 7 + j * 3) % 11) / 10.0  # 4 … 24
            module = f"{PREFIX}.{i}.{block}.{name}"
            specs.append((f"{module}.lora_A.weight", (rank, inn), t))
            specs.append((f"{module}.lora_B.weight", (out, rank), t))
    return sorted(specs)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even (finite inputs only)."""
    u = x.astype(np.float32, copy=False).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype("<u2")


def make_tensor(key: str, shape: tuple[int, int], t: float, seed: int, index: int) -> np.ndarray:
    rng = np.random.default_rng([seed, index])
    g = rng.standard_normal(shape, dtype=np.float32)
    if ".lora_A." in key:  # (r, in): row i scaled by dᵢ
        d = np.exp(-np.arange(shape[0], dtype=np.float32) / np.float32(t))  # (r,)
        g *= d[:, None] / np.float32(np.sqrt(shape[1]))
    else:  # (out, r)
        g *= np.float32(0.02)
    return g


def header_bytes(specs, metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, shape, _ in specs:
        n = 2 * shape[0] * shape[1]
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def adapter_config(rank: int, alpha: int) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.05,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "target_modules": sorted(MODULES),
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_adapter(out_dir: Path, n_layers: int = 32, rank: int = 64, seed: int = 0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = tensor_specs(n_layers, rank)
    dest = out_dir / "adapter_model.safetensors"
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(header_bytes(specs, {"format": "pt", "generator": "lorascope benchmarks"}))
        for index, (key, shape, t) in enumerate(specs):
            f.write(to_bf16_bits(make_tensor(key, shape, t, seed, index)).tobytes())
    tmp.replace(dest)
    cfg = adapter_config(rank, alpha=2 * rank)
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return dest


def check_with_library(path: Path, n_expected: int) -> None:
    """Parse the file with safetensors (header, offsets, coverage); read one tensor via torch if present."""
    from safetensors import safe_open

    try:
        import torch  # noqa: F401

        framework = "pt"
    except ImportError:
        framework = "np"
    with safe_open(str(path), framework=framework) as f:
        keys = list(f.keys())
        if len(keys) != n_expected:
            raise SystemExit(f"{path}: expected {n_expected} tensors, the library sees {len(keys)}")
        if framework == "pt":
            t = f.get_tensor(keys[0])
            assert str(t.dtype) == "torch.bfloat16", t.dtype


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--layers", type=int, default=32, help="decoder layers (default 32)")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank r (default 64)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    dest = write_adapter(args.out_dir, args.layers, args.rank, args.seed)
    check_with_library(dest, 2 * len(MODULES) * args.layers)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB, {2 * len(MODULES) * args.layers} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
