# Hand-written: streams one tensor at a time (memory) and writes bf16, which safetensors.numpy cannot.
"""Writing tensor files, through the public atomic-output core (`lorascope.files`: every output
appears complete or not at all, is created exclusively, and no temporary survives an error).

* `SafetensorsWriter` streams tensors one at a time (memory: one tensor), numpy arrays or
  `StoredFactor`s (a tensor's bytes as read, copied without decoding): without a reserved
  header room it writes sorted keys and an 8-byte padded header (layout in its docstring); with
  one (what the format writers pass) the tensors stay in the order added and nothing is copied.
* `write_safetensors`: a whole dict of fp16/fp32/fp64 arrays, by the safetensors library.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..files import atomic_path, publish_file, temp_beside, writing
from ._stored import StoredFactor

_NUMPY = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16}
# safetensors tag each short dtype name is written as; bf16 arrives as float32 holding bf16 values.
_TAG_OF = {"fp64": "F64", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def write_safetensors(dest: str | Path, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
    """Write float tensors (fp16/fp32/fp64 numpy arrays) atomically."""
    from safetensors.numpy import save_file

    clean = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(dest) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), round to nearest even (exact for bf16-valued input)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    carry = bits >> 16  # in place from here on: one uint32 temporary
    carry &= 1
    carry += 0x7FFF
    carry += bits
    carry >>= 16
    return carry.astype("<u2")


def _raw(key: str, arr: np.ndarray | StoredFactor, dtype: str, dest) -> np.ndarray:
    """One tensor as a C-contiguous little-endian array in its stored dtype (written without a copy).
    A `StoredFactor` of that dtype is its stored bits, as they are: nothing decoded or rounded."""
    if dtype not in _TAG_OF:
        raise UnsupportedError(f"cannot write tensor {key!r} as {dtype}", path=dest)
    if isinstance(arr, StoredFactor):
        if arr.kind == dtype:
            return arr.bits
        arr = arr.decode()  # another dtype: converted like any array
    if dtype == "bf16":
        return bf16_bits(arr)
    return np.ascontiguousarray(arr, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"))


def header_room(names: Iterable[str], tensors_per_layer: int = 3) -> int:
    """A generous estimate of the header a format writer will need for layers `names` (their keys,
    dtypes, shapes and offsets, and metadata that spells every name twice), for
    `SafetensorsWriter(reserve=...)`; a few hundred bytes per layer, 0.2 % of a 7B-sized adapter."""
    return 512 + sum(tensors_per_layer * (len(n) + 160) + 2 * len(n) + 64 for n in names)


def _header_text(metadata, entries, pad_to: int) -> bytes:
    """The JSON header for (key, (tag, shape, start, n)) entries whose data lie back to back in the
    given order, padded with spaces to a multiple of `pad_to` bytes."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for key, (tag, shape, _, n) in entries:
        header[key] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % pad_to)


def write_safetensors_typed(
    dest: str | Path, tensors: Mapping[str, tuple[np.ndarray, str]], metadata=None
) -> None:
    """Write {key: (array, short dtype)} atomically, any of fp64/fp32/fp16/bf16 (bf16: the
    safetensors numpy API cannot), keys in sorted order (extract's full-weight files)."""
    with SafetensorsWriter(dest) as w:
        for key in sorted(tensors):
            arr, dtype = tensors[key]
            w.add(key, arr, dtype)
        w.close(metadata)


class SafetensorsWriter:
    """Stream tensors into a safetensors file, one tensor in memory at a time.

    `add(key, array, dtype)` appends one tensor's bytes to a temporary file beside `dest`; `close(metadata)`
    writes the header and renames the file onto `dest`.  Leaving a `with` block by an exception (or
    calling `abort()`) removes the temporary file: `dest` is never half written.  A key added twice
    keeps the last array, like a dict.

    Two layouts.  Without `reserve`: tensors in sorted key order, the header padded to 8 bytes,
    assembled at close by copying the data into a second file.  With `reserve=N` (a caller's
    estimate of the header size, e.g. from its layer names): the data file starts with N bytes of
    room for the header and the tensors stay where they were written, in the order added; at
    close the header is written into that room, padded with spaces (the format allows trailing
    whitespace in the header), and the file itself is renamed into
    place, so nothing is copied.  A header that outgrows the room falls back to the copy.
    """

    _CHUNK = 1 << 24  # bytes copied per read when assembling the final file

    def __init__(self, dest: str | Path, reserve: int = 0):
        self.dest = Path(dest)
        self.closed = True  # until the data file exists: abort() has nothing to remove
        with writing(self.dest):
            fd, tmp = temp_beside(self.dest, ".data.tmp")
        self._data_path = tmp
        self._data = os.fdopen(fd, "w+b")
        self.closed = False
        self._room = -(-max(reserve, 0) // 8) * 8  # bytes held for the header (a multiple of 8)
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}  # key -> (tag, shape, start, n)
        self._size = 0  # data bytes written after the header room
        try:
            with writing(self.dest):
                if self._room:
                    self._data.write(b" " * (8 + self._room))
        except BaseException:
            self.abort()
            raise

    def add(self, key: str, arr: np.ndarray | StoredFactor, dtype: str) -> None:
        """Append one tensor: an array, or a `StoredFactor` (its bits copied when `dtype` is its own)."""
        raw = _raw(key, arr, dtype, self.dest)
        with writing(self.dest):
            self._data.write(raw.data.cast("B"))
        shape = list(arr.shape) if isinstance(arr, StoredFactor) else list(np.shape(arr))
        self._entries[key] = (_TAG_OF[dtype], shape, self._size, raw.nbytes)
        self._size += raw.nbytes

    def close(self, metadata=None) -> None:
        """Write the final file atomically and remove the data file."""
        with writing(self.dest):
            if self._room and self._close_in_place(metadata):
                return
            text = _header_text(metadata, ((k, self._entries[k]) for k in sorted(self._entries)), pad_to=8)
            self._data.flush()
        with atomic_path(self.dest) as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for key in sorted(self._entries):
                _, _, start, n = self._entries[key]
                self._copy(f, 8 + self._room + start if self._room else start, n)
        self.abort()

    def _close_in_place(self, metadata) -> bool:
        """Header into the reserved room, the file renamed onto `dest`; False when it does not fit."""
        entries = sorted(self._entries.items(), key=lambda kv: kv[1][2])  # in file order
        if sum(n for _, (_, _, _, n) in entries) != self._size:  # a key added twice left a hole
            return False
        text = _header_text(metadata, entries, pad_to=8)
        if len(text) > self._room:
            return False
        text += b" " * (self._room - len(text))
        self._data.seek(0)
        self._data.write(struct.pack("<Q", len(text)))
        self._data.write(text)
        self._data.close()
        self.closed = True
        try:
            publish_file(self._data_path, self.dest)
        except BaseException:
            if os.path.lexists(self._data_path):
                os.unlink(self._data_path)
            raise
        return True

    def _copy(self, f, start: int, n: int) -> None:
        self._data.seek(start)
        while n > 0:
            chunk = self._data.read(min(n, self._CHUNK))
            if not chunk:
                raise FormatError("streaming writer: temporary data file is cut short", path=self.dest)
            f.write(chunk)
            n -= len(chunk)

    def abort(self) -> None:
        """Drop the temporary data file (idempotent); `dest` is left untouched."""
        if not self.closed:
            self.closed = True
            try:
                self._data.close()  # may fail to flush (no space left): the file goes anyway
            except OSError:
                pass
            if os.path.lexists(self._data_path):
                os.unlink(self._data_path)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
