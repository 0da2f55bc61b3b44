"""Factors kept as their stored bytes, so that a conversion that changes no value copies them.

A PEFT → kohya conversion renames keys and carries the scale as alpha; the factors themselves are
written back unchanged.  Decoding them (bf16 widened to float32) only to encode them again (rounded
back to bf16) is pure memory traffic, so for that case a reader hands out the bytes as stored:

* `StoredFactor`: one tensor's little-endian bit patterns (one unsigned integer per element),
  its dtype and shape.  `reshape` is free; `decode()` gives the numpy array `TensorSource.get`
  would; `nonfinite()` finds NaN/Inf from the exponent bits without decoding.
* `StoredDelta`: a `LoraDelta` whose `down`/`up` are decoded only when first asked for.  The
  plain-LoRA readers give every layer of a .safetensors file this way (`read_stored`): the
  spectral passes take a bf16 layer's bit patterns (`bits`) and widen them one cache-sized block
  at a time inside the Gram products, so an audit or a merge-audit never forms a whole float32
  copy of a factor; the writers (`_contract.stored_factors(..., keep_stored=True)` →
  `SafetensorsWriter.add`) copy the stored bits when the output dtype is the stored one, and
  decode and encode otherwise.
  A layer whose factors a reader computes (a LoCon Tucker core folded in, LoHa / LoKr sides) or
  reads from memory (a PyTorch .bin) comes as a plain decoded `LoraDelta` instead.

The bytes written are the bytes the decode → encode path writes: decoding is exact (bf16 is the
top half of a float32), and encoding a decoded value in its own dtype is the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..types import LayerInfo, LoraDelta, widen_bf16

# Exponent bits of each storage dtype: all ones means Inf or NaN.
_EXPONENT = {"bf16": 0x7F80, "fp16": 0x7C00, "fp32": 0x7F800000, "fp64": 0x7FF0000000000000}
_BITS: dict[str, np.dtype] = {
    "bf16": np.dtype("<u2"),
    "fp16": np.dtype("<u2"),
    "fp32": np.dtype("<u4"),
    "fp64": np.dtype("<u8"),
}
_FLOAT: dict[str, np.dtype] = {
    "bf16": np.dtype(np.float32),
    "fp16": np.dtype("<f2"),
    "fp32": np.dtype("<f4"),
    "fp64": np.dtype("<f8"),
}
_CHUNK = 1 << 17  # elements per finiteness check step: the scratch stays in cache


@dataclass(frozen=True)
class StoredFactor:
    """One tensor exactly as stored: `bits` (count,) unsigned integers of the storage width."""

    bits: np.ndarray  # (count,) little-endian bit patterns, uint16 for bf16 / fp16
    kind: str  # storage dtype: bf16, fp16, fp32, fp64
    shape: tuple[int, ...]

    @staticmethod
    def bit_dtype(kind: str) -> np.dtype:
        """The unsigned integer dtype holding one element of `kind`."""
        return _BITS[kind]

    @property
    def dtype(self) -> np.dtype:
        """The dtype `decode()` returns (float32 for bf16, as `TensorSource.get`)."""
        return _FLOAT[self.kind]

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)

    def reshape(self, *shape: int) -> StoredFactor:
        """The same bytes under another shape (one -1 is inferred), like `ndarray.reshape`."""
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.bits.size // known if s == -1 else s for s in shape) if known else shape
        if math.prod(shape) != self.bits.size or any(s < 0 for s in shape):
            raise ValueError(f"cannot reshape {self.bits.size} elements into {list(shape)}")
        return StoredFactor(self.bits, self.kind, tuple(shape))

    def decode(self) -> np.ndarray:
        """The values as numpy floats; bf16 → float32 exactly (the 16 bits are its high half)."""
        if self.kind == "bf16":
            return widen_bf16(self.bits).reshape(self.shape)
        return self.bits.view(_FLOAT[self.kind]).reshape(self.shape)

    def nonfinite(self) -> bool:
        """True when an element is NaN or Inf: its exponent bits are all ones.  Shifting the sign
        bit out leaves one comparison: (bits << 1) ≥ (exponent << 1)."""
        bits = self.bits
        limit = bits.dtype.type((_EXPONENT[self.kind] << 1) & ((1 << 8 * bits.itemsize) - 1))
        scratch = np.empty(min(bits.size, _CHUNK), dtype=bits.dtype)
        for i in range(0, bits.size, _CHUNK):
            part = bits[i : i + _CHUNK]
            shifted = scratch[: part.size]
            np.left_shift(part, 1, out=shifted)
            if shifted.max() >= limit:
                return True
        return False


class StoredDelta(LoraDelta):
    """A layer's factors as stored: `stored` = (down (r, in), up (out, r)) as `StoredFactor`s;
    `down` and `up` are the decoded arrays, built only when first asked for."""

    stored: tuple[StoredFactor, StoredFactor]

    def __init__(self, info: LayerInfo, down: StoredFactor, up: StoredFactor) -> None:
        object.__setattr__(self, "info", info)
        object.__setattr__(self, "stored", (down, up))

    @cached_property
    def down(self) -> np.ndarray:
        return self.stored[0].decode()  # (r, in)

    @cached_property
    def up(self) -> np.ndarray:
        return self.stored[1].decode()  # (out, r)

    @cached_property
    def bits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(down (r, in), up (out, r)) as bf16 bit patterns (uint16) when both factors are stored in
        bf16, for the spectral functions (`structured.factor_arrays`), which widen them block by
        block; None for any other dtype (then `down` and `up` are the values)."""
        down, up = self.stored
        if down.kind != "bf16" or up.kind != "bf16":
            return None
        return down.bits.reshape(down.shape), up.bits.reshape(up.shape)

    def nonfinite(self) -> str | None:
        """The first factor holding NaN/Inf ("down", then "up"), found from the bits; None if none."""
        for which, factor in zip(("down", "up"), self.stored, strict=True):
            if factor.nonfinite():
                return which
        return None

    def relabel(self, info: LayerInfo) -> StoredDelta:
        """The same stored factors described by `info` (a converted layer's name, alpha, ...)."""
        return StoredDelta(info, *self.stored)


def read_stored(source: Any, info: LayerInfo, keys: tuple[str, str]) -> StoredDelta | None:
    """Layer `info`'s (down, up) tensors `keys` of `source` (a TensorSource) as stored, reshaped to
    (r, in) / (out, r) (a conv kernel flattened); None where the source keeps no file bytes."""
    down, up = (source.stored(k) for k in keys)
    if down is None or up is None:
        return None
    return StoredDelta(info, down.reshape(info.rank, -1), up.reshape(info.out_features, info.rank))
