"""Frozen value types shared by every module: one layer's low-rank update and a whole adapter.

An `Adapter` is *lazy*: it knows every layer's shapes and scale from the file header, and loads a
layer's factors only when asked (`adapter.delta(name)`, `adapter.iter_deltas()`), so a 7B-sized
adapter is never held in memory at once.  Adapters built in memory (`Adapter.from_deltas`) use the
same interface.

Conventions (the PEFT ones, used for every format after reading):
  ΔW = scale · up @ down,  down: (r, in_features),  up: (out_features, r)
Conv factors are flattened (down: (r, c_in·kh·kw), up: (c_out, r)); `weight_shape` keeps the model's
shape.  Embedding LoRA stores ΔWᵀ in this form; singular values do not care.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

LAYER_KINDS = ("linear", "conv", "embedding")


@dataclass(frozen=True)
class LayerInfo:
    """What a reader knows about one layer from the header alone (no tensor data read)."""

    name: str  # module path in the model, e.g. "model.layers.0.self_attn.q_proj"
    kind: str  # one of LAYER_KINDS
    rank: int  # allocated rank r
    out_features: int
    in_features: int  # flattened for conv (c_in·kh·kw)
    scale: float  # ΔW = scale · up @ down
    dtype: str  # storage dtype of the factors, e.g. "bf16"
    weight_shape: tuple[int, ...] = ()  # the model's ΔW shape; () means (out, in)
    dora: bool = False  # a DoRA magnitude vector exists: we audit the low-rank direction only
    extras: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts, e.g. alpha

    @property
    def params(self) -> int:
        """Trainable LoRA parameters of this layer: r·(in + out); a block-diagonal (RaLoRA) layer of
        n blocks and equivalent rank r trains r/n·(in + out)."""
        return self.rank * (self.in_features + self.out_features) // int(self.extras.get("blocks", 1))

    def params_at(self, rank: int) -> int:
        return rank * (self.in_features + self.out_features)


@dataclass(frozen=True)
class LoraDelta:
    """One layer's factors, loaded.  `down`/`up` keep their storage precision (fp16, fp32, ...)."""

    info: LayerInfo
    down: np.ndarray  # (r, in)
    up: np.ndarray  # (out, r)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def scale(self) -> float:
        return self.info.scale

    def dense(self) -> np.ndarray:
        """ΔW as a float64 (out, in) matrix.  For tests and small layers only: O(out·in) memory."""
        return self.info.scale * self.product()

    def product(self) -> np.ndarray:
        """The unscaled up @ down (out, in) in float64."""
        return self.up.astype(np.float64) @ self.down.astype(np.float64)


class StructuredDelta(LoraDelta):
    """A layer whose ΔW = scale·op(W₁, W₂) with each side Wᵢ = Uᵢ @ Dᵢ given by small factors:
    op = "kron" (LyCORIS LoKr, W₁ ⊗ W₂) or "hadamard" (LoHa, W₁ ⊙ W₂).

    `down` and `up` are the equivalent plain factors (kron: kron(D₁, D₂), kron(U₁, U₂); hadamard:
    the Khatri–Rao products), built only when first asked for: the spectral core reads `sides`
    (spectral.delta_core), so an audit never forms them, and `product()` forms U·D at the cost
    of the sides, not of the (possibly much wider) plain factors."""

    op: str
    sides: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # ((U₁, D₁), (U₂, D₂))

    def __init__(self, info: LayerInfo, op: str, sides) -> None:
        if op not in ("kron", "hadamard"):
            raise ValueError(f"unknown structure {op!r}")
        object.__setattr__(self, "info", info)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "sides", tuple((u, d) for u, d in sides))

    @cached_property
    def down(self) -> np.ndarray:
        (_, d1), (_, d2) = self.sides
        if self.op == "kron":
            return np.kron(d1, d2)  # (k1·k2, i1·i2)
        return (d1[:, None, :] * d2[None, :, :]).reshape(-1, d1.shape[1])  # (r1·r2, in) Khatri–Rao

    @cached_property
    def up(self) -> np.ndarray:
        (u1, _), (u2, _) = self.sides
        if self.op == "kron":
            return np.kron(u1, u2)  # (o1·o2, k1·k2)
        return (u1[:, :, None] * u2[:, None, :]).reshape(u1.shape[0], -1)  # (out, r1·r2) Khatri–Rao

    def product(self) -> np.ndarray:
        """The unscaled up @ down (out, in) in float64, from the sides."""
        w1, w2 = (np.asarray(u, np.float64) @ np.asarray(d, np.float64) for u, d in self.sides)
        return np.kron(w1, w2) if self.op == "kron" else w1 * w2


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) as float32, exactly: a bf16 is the top 16 bits of a float32."""
    return np.left_shift(bits, 16, dtype=np.uint32).view(np.float32)


def factor_values(x: np.ndarray) -> np.ndarray:
    """A factor array's values: a uint16 array holds bf16 bit patterns (`formats.StoredDelta.bits`) and is
    widened to float32; any float array is returned as it is."""
    return widen_bf16(x) if x.dtype == np.uint16 else x


Loader = Callable[[LayerInfo], LoraDelta]


@dataclass(frozen=True)
class Adapter:
    """A whole adapter: layer descriptions plus a loader that reads one layer's factors on demand."""

    format: str  # a formats.FORMATS name ("peft", "kohya", ...), or "memory"
    layers: tuple[LayerInfo, ...]
    loader: Loader = field(repr=False, compare=False)
    path: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # e.g. the parsed adapter_config.json
    metadata: Mapping[str, str] = field(default_factory=dict)  # safetensors header metadata
    modules_to_save: tuple[str, ...] = ()  # fully trained modules: listed, not audited
    notes: tuple[str, ...] = ()  # non-fatal findings of the reader, shown to the user
    # A derived adapter computed by a pipeline (compress, merge) while it is written: `iter_deltas`
    # yields from stream() instead of calling `loader` layer by layer.  Its `layers` then give the
    # names, kinds and shapes; a layer's rank, scale and dtype are final in the yielded delta's
    # `info` (writers take every per-layer fact from the delta they write).
    stream: Callable[[], Iterator[LoraDelta]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self._index) != len(self.layers):
            raise ValueError("duplicate layer names in adapter")

    @cached_property
    def _index(self) -> dict[str, LayerInfo]:
        """name → LayerInfo: `info` is O(1), so callers that look up every layer stay linear."""
        return {layer.name: layer for layer in self.layers}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    def info(self, name: str) -> LayerInfo:
        return self._index[name]

    def delta(self, name: str) -> LoraDelta:
        return self.loader(self.info(name))

    def iter_deltas(self) -> Iterator[LoraDelta]:
        """Yield layers one at a time, in file order; only a few layers' factors are alive at once."""
        if self.stream is not None:
            yield from self.stream()
            return
        for layer in self.layers:
            yield self.loader(layer)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @classmethod
    def from_deltas(cls, deltas: list[LoraDelta], *, format: str = "memory", **kwargs: Any) -> Adapter:
        """An in-memory adapter, e.g. the result of compress or merge."""
        table = {d.name: d for d in deltas}
        return cls(
            format=format,
            layers=tuple(d.info for d in deltas),
            loader=lambda info: table[info.name],
            **kwargs,
        )


def peft_scale(alpha: float, rank: int, rslora: bool) -> float:
    """PEFT's `LoraLayer.update_layer`: scale = alpha/r, or alpha/√r with `use_rslora`."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def peft_alpha(scale: float, rank: int, rslora: bool) -> float:
    """The inverse of `peft_scale`: the lora_alpha that gives `scale` at `rank`."""
    return scale * (math.sqrt(rank) if rslora else rank)


def frozen_mapping(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


DTYPES = ("fp16", "bf16", "fp32", "fp64")  # storage dtypes lorascope reads and writes
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}  # bytes per value of each


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round factors to a storage dtype; bf16 is kept as float32 holding bf16 values (numpy has no
    bf16), rounded to nearest even.  fp16 overflow becomes inf (callers check and refuse it)."""
    if dtype == "bf16":
        bits = np.array(x, dtype=np.float32, order="C").view(np.uint32)  # a copy we may change
        # round to nearest even on the low 16 bits, then clear them (in place: one temporary)
        carry = bits >> 16
        carry &= 1
        carry += 0x7FFF
        bits += carry
        bits &= 0xFFFF0000
        return bits.view(np.float32)
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype={"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[dtype])
