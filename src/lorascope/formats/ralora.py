"""RaLoRA: block-diagonal LoRA (a directory of ralora_config.json + ralora_model.safetensors).

A RaLoRA layer splits its input and output into n equal blocks and trains one rank-r LoRA per block:

    ΔW = scale · diag(B₁A₁, …, B_nA_n),   Aᵢ: (r, in/n),  Bᵢ: (out/n, r),  scale = lora_alpha / r

so it has r·(in + out) parameters (a plain rank-r LoRA's count) and an equivalent rank of n·r.

Files (written by `lorascope.gid.save_ralora` and by `write` here):

* `ralora_model.safetensors`: per layer `<name>.ralora_A` (n, r, in/n) and `<name>.ralora_B`
  (n, out/n, r); with `modules_to_save`, their full tensors as `modules_to_save.<module>.<param>`
  (listed, never audited).
* `ralora_config.json`: {"format": "lorascope.ralora/v1", "base_model_name_or_path": ...,
  "layers": {name: {"r", "blocks", "lora_alpha", "kind"[, "weight_shape"]}}, "modules_to_save": [...]}.

Reading gives each layer as an *exact* LoRA of the equivalent rank n·r: down = diag(A₁, …, A_n)
(n·r, in) and up = diag(B₁, …, B_n) (out, n·r), both block-diagonal.  The singular values of that
product are the union of the blocks' singular values (the blocks act on disjoint rows and columns),
so the audit's core applies unchanged, and `convert --to peft` writes a standard PEFT LoRA of rank
n·r with the same ΔW.  `LayerInfo.rank` is the equivalent rank n·r; `extras["blocks"]` and
`extras["block_rank"]` keep n and r, and `LayerInfo.params` counts the trained r·(in + out).

Writing: a delta whose `info.extras["blocks"]` is n > 1 must have exactly block-diagonal factors
(zero outside the blocks) and is written as n blocks; any other LoRA layer is written as one block
(n = 1), so every LoRA adapter converts to this format with its ΔW unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdapterNotFoundError, FormatError, UnsupportedError
from ..files import json_loads
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from ._contract import FormatSpec, check_dest, read_options, stored_factors
from ._io import TensorSource, open_safetensors
from ._keys import match_spelling

SPEC = FormatSpec(
    name="ralora",
    read_options={},
    directory=True,
    file_name=None,
    kinds=("linear", "conv"),
    flat_names=False,
    components=True,
    passthrough=False,
)

CONFIG = "ralora_config.json"
WEIGHTS = "ralora_model.safetensors"
SCHEMA = "lorascope.ralora/v1"
SAVED = "modules_to_save."
_LAYER_KEYS = {"r", "blocks", "lora_alpha", "kind", "weight_shape"}


def sniff(path: str | Path) -> bool:
    p = Path(path)
    if p.is_file():
        return p.name == WEIGHTS and (p.parent / CONFIG).is_file()
    return p.is_dir() and (p / CONFIG).is_file()


def model_path(info: LayerInfo) -> str | None:
    return info.name


def match_key(info: LayerInfo) -> str:
    return match_spelling(info.name, info.name)


def read(path: str | Path, **options: Any) -> Adapter:
    read_options(SPEC, options, path)
    root = Path(path).parent if Path(path).is_file() else Path(path)
    if not (root / CONFIG).is_file() or not (root / WEIGHTS).is_file():
        raise AdapterNotFoundError(f"a RaLoRA adapter is a directory with {CONFIG} and {WEIGHTS}", path=root)
    cfg = json_loads((root / CONFIG).read_bytes(), root / CONFIG, "not valid JSON ({})")
    if not isinstance(cfg, dict) or cfg.get("format") != SCHEMA or not isinstance(cfg.get("layers"), dict):
        raise FormatError(
            f"{CONFIG} must be a JSON object with format {SCHEMA!r} and a 'layers' object", path=root
        )
    src = open_safetensors(root / WEIGHTS)
    keys = set(src.keys())
    layers = [_layer(src, name, entry, keys) for name, entry in cfg["layers"].items()]
    saved = sorted({k[len(SAVED) :].rsplit(".", 1)[0] for k in keys if k.startswith(SAVED)})
    keys -= {k for k in keys if k.startswith(SAVED)}
    if keys:
        raise FormatError(f"tensors not described in {CONFIG}: {', '.join(sorted(keys)[:5])}", path=src.path)
    blocks = sorted({int(x.extras["blocks"]) for x in layers})
    listed = ", ".join(map(str, blocks))
    note = f"RaLoRA: rank = equivalent rank blocks × block rank (blocks per layer: {listed})"
    config = {k: cfg[k] for k in ("base_model_name_or_path", "task_type") if cfg.get(k)}
    return Adapter(
        format="ralora",
        layers=tuple(layers),
        loader=lambda info: _load(src, info),
        path=str(root),
        config=frozen_mapping(config),
        metadata=frozen_mapping(src.metadata),
        modules_to_save=tuple(saved),
        notes=(note,),
    )


def _layer(src: TensorSource, name: str, entry: Any, keys: set[str]) -> LayerInfo:
    def bad(what: str) -> FormatError:
        return FormatError(
            f"layer {name}: {what}", path=src.path, keys=[f"{name}.ralora_A", f"{name}.ralora_B"]
        )

    if (
        not isinstance(entry, dict)
        or set(entry) - _LAYER_KEYS
        or not {"r", "blocks", "lora_alpha"} <= set(entry)
    ):
        raise bad(f"its {CONFIG} entry must hold r, blocks, lora_alpha (and optionally kind, weight_shape)")
    a_key, b_key = f"{name}.ralora_A", f"{name}.ralora_B"
    if a_key not in keys or b_key not in keys:
        raise bad(f"{a_key} and {b_key} must both be present")
    keys -= {a_key, b_key}
    sa, sb = src.shape(a_key), src.shape(b_key)  # (n, r, in/n), (n, out/n, r)
    r, n = entry["r"], entry["blocks"]
    ok = isinstance(r, int) and isinstance(n, int) and r >= 1 and n >= 1 and len(sa) == 3 and len(sb) == 3
    if not (ok and sa[:2] == (n, r) and sb[0] == n and sb[2] == r and sa[2] >= 1 and sb[1] >= 1):
        raise bad(f"shapes A {list(sa)} / B {list(sb)} do not fit r={r}, blocks={n}")
    alpha = entry["lora_alpha"]
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise bad(f"lora_alpha must be a finite number, got {alpha!r}")
    kind = entry.get("kind", "linear")
    shape = tuple(entry.get("weight_shape") or ())
    if kind not in SPEC.kinds or (kind == "conv") != bool(shape):
        raise bad(f"kind {kind!r} must be linear, or conv with a weight_shape")
    extras = {"algo": "lora", "blocks": n, "block_rank": r, "alpha": float(alpha)}
    return LayerInfo(
        name=name,
        kind=kind,
        rank=n * r,
        out_features=n * sb[1],
        in_features=n * sa[2],
        scale=float(alpha) / r,
        dtype=src.dtype(a_key),
        weight_shape=shape,
        extras=frozen_mapping(extras),
    )


def block_diagonal(blocks: np.ndarray) -> np.ndarray:
    """(n, p, q) blocks -> the (n·p, n·q) block-diagonal matrix diag(blocks[0], …, blocks[n-1])."""
    n, p, q = blocks.shape
    out = np.zeros((n * p, n * q), dtype=blocks.dtype)
    for i in range(n):
        out[i * p : (i + 1) * p, i * q : (i + 1) * q] = blocks[i]
    return out


def diagonal_blocks(x: np.ndarray, n: int) -> np.ndarray | None:
    """The inverse of `block_diagonal`: (n, p, q) blocks, or None if x is not exactly block-diagonal."""
    rows, cols = x.shape
    if rows % n or cols % n:
        return None
    p, q = rows // n, cols // n
    blocks = np.stack([x[i * p : (i + 1) * p, i * q : (i + 1) * q] for i in range(n)])  # (n, p, q)
    return blocks if np.array_equal(block_diagonal(blocks), x) else None


def _load(src: TensorSource, info: LayerInfo) -> LoraDelta:
    a = src.get(f"{info.name}.ralora_A")  # (n, r, in/n)
    b = src.get(f"{info.name}.ralora_B")  # (n, out/n, r)
    return LoraDelta(info, block_diagonal(a), block_diagonal(b))  # (n·r, in), (out, n·r)


def write(adapter: Adapter, dest: str | Path, *, source: Adapter | None = None) -> Path:
    """Write `adapter` as a RaLoRA directory (module docstring), built beside `dest` and renamed in."""
    from ..files import atomic_dir, write_text
    from ._write import SafetensorsWriter, header_room

    source = adapter if source is None else source
    dest = check_dest(dest)
    with atomic_dir(dest) as tmp:
        entries: dict[str, Any] = {}
        with SafetensorsWriter(tmp / WEIGHTS, reserve=header_room(adapter.names, 2)) as out:
            for delta in adapter.iter_deltas():  # one layer's factors alive at a time
                entries[delta.name] = _write_layer(out, delta, adapter.path)
            out.close({"format": "pt"})
        cfg = {"format": SCHEMA, "layers": entries}
        cfg.update(
            {k: source.config[k] for k in ("base_model_name_or_path", "task_type") if source.config.get(k)}
        )
        write_text(tmp / CONFIG, json.dumps(cfg, indent=2) + "\n")
    return dest


def _write_layer(out: Any, delta: LoraDelta, path: str | None) -> dict[str, Any]:
    info = delta.info
    n = int(info.extras.get("blocks", 1))
    (down, ddt), (up, udt) = stored_factors(delta, SPEC, path)
    down, up = down.reshape(info.rank, -1), up.reshape(info.out_features, -1)  # conv: flattened
    a, b = diagonal_blocks(down, n), diagonal_blocks(up, n)  # (n, r, in/n), (n, out/n, r)
    if a is None or b is None:
        raise UnsupportedError(
            f"layer {info.name}: cannot write it (factors are not block-diagonal with {n} blocks)", path=path
        )
    out.add(f"{info.name}.ralora_A", a, ddt)
    out.add(f"{info.name}.ralora_B", b, udt)
    r = info.rank // n
    entry: dict[str, Any] = {"r": r, "blocks": n, "lora_alpha": info.scale * r, "kind": info.kind}
    if info.kind == "conv":
        entry["weight_shape"] = list(info.weight_shape)
    return entry
