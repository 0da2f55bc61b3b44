"""With `_header.py` (headers), the only module that touches tensor-file bytes.

`TensorSource` is what format readers see: key names, shapes and dtypes from the header, and one
tensor at a time as a numpy array.  Two sources exist:

* `SafetensorsSource`: the header is parsed and every entry's fields checked (`_header.py`: types,
  ranges, byte counts against shapes), the `safetensors` library validates the layout, and each
  tensor is read with positional reads of its exact byte range (never through a memory map: a file
  truncated under one kills the process with SIGBUS).  A short read is "file changed or truncated
  while reading".  numpy has no bfloat16, so BF16 tensors are widened to float32 exactly (a bf16 is
  the top 16 bits of a float32).
* `DictSource`: tensors already in memory (PyTorch ``adapter_model.bin``, tests).

Writing: `write_safetensors` writes through a temporary file in the destination directory and
renames it into place, so a crash never leaves a half-written adapter and the input is never
overwritten in place.  `SafetensorsWriter` streams tensors one at a time (memory: one tensor) and
produces the same bytes as `write_safetensors_typed`.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import FormatError, MissingDependencyError, UnsupportedError
from ._header import check_with_library, open_fd, parse_header

# safetensors dtype tag -> (our short name, numpy dtype or None for bf16)
_DTYPES = {
    "F64": ("fp64", np.float64),
    "F32": ("fp32", np.float32),
    "F16": ("fp16", np.float16),
    "BF16": ("bf16", None),
}
_NUMPY_TO_TAG = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}


class TensorSource:
    """Read-only view of named tensors."""

    path: str
    metadata: Mapping[str, str]

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, key: str) -> str:
        """Storage dtype as a short name: fp64, fp32, fp16, bf16 (anything else raises on get)."""
        raise NotImplementedError

    def get(self, key: str) -> np.ndarray:
        raise NotImplementedError


class SafetensorsSource(TensorSource):
    """A .safetensors file whose tensors are read by positional reads of their exact byte ranges.

    At open the header is parsed and every entry checked (`_check_entries`), and the safetensors
    library validates the layout (overlaps, coverage); no tensor is then read through a memory map:
    a file truncated under an mmap read kills the process with SIGBUS and no message, while a short
    positional read is a one-line FormatError.  One descriptor per file serves every worker thread
    (`os.preadv` takes the offset, so reads need no lock); it closes when the source is collected."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        fd = open_fd(self.path)
        try:
            self._opened = _identity(os.fstat(fd))
            header, self._data_start = parse_header(fd, self._opened[0], self.path)
            check_with_library(self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries: dict[str, dict] = header

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def dtype(self, key: str) -> str:
        tag = self._entries[key]["dtype"]
        return _DTYPES[tag][0] if tag in _DTYPES else tag.lower()

    def get(self, key: str) -> np.ndarray:
        entry = self._entries[key]
        tag = entry["dtype"]
        if tag not in _DTYPES:
            raise UnsupportedError(
                f"tensor {key!r} has dtype {tag}; lorascope reads F64, F32, F16 and BF16", path=self.path
            )
        start, end = entry["data_offsets"]
        kind = _DTYPES[tag][1]
        if kind is None:  # BF16
            raw = _scratch_u2((end - start) // 2)  # (count,) reused per thread: no fresh pages per tensor
            self._read_into(key, raw, start)
            # bf16 -> fp32 is exact: place the 16 stored bits in the high half of a 32-bit word.
            wide = raw.astype(np.uint32)  # (count,)
            wide <<= 16
            return wide.view(np.float32).reshape(entry["shape"])
        stored = np.dtype(kind).newbyteorder("<")  # safetensors data are little-endian
        arr = np.empty((end - start) // stored.itemsize, dtype=stored)  # (count,)
        self._read_into(key, arr, start)
        return arr.reshape(entry["shape"])

    def _read_into(self, key: str, arr: np.ndarray, start: int) -> None:
        """Fill the contiguous `arr` with the tensor's bytes.  A short read, or a file whose size or
        modification time moved since it was opened, is an error, never a partly filled tensor."""
        view = arr.data.cast("B")  # the array's own buffer: filled in place
        got = _pread_into(self._fd, view, self._data_start + start)
        if got != view.nbytes or _identity(os.fstat(self._fd)) != self._opened:
            raise FormatError(
                f"file changed or truncated while reading: tensor {key!r} got {got} of {view.nbytes} bytes",
                path=self.path,
                keys=[key],
            )


def _identity(st: os.stat_result) -> tuple[int, int]:
    """(size, modification time): what a rewrite in place or a truncation changes."""
    return st.st_size, st.st_mtime_ns


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read up to len(view) bytes at `offset` into `view` (several calls where the kernel returns
    fewer bytes, e.g. above 2 GiB); the count read, short only at end of file."""
    done, n = 0, view.nbytes
    while done < n:
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:  # no preadv (e.g. older macOS): read, then copy
            chunk = os.pread(fd, n - done, offset + done)
            got = len(chunk)
            view[done : done + got] = chunk
        if got <= 0:
            break
        done += got
    return done


_SCRATCH = threading.local()


def _scratch_u2(count: int) -> np.ndarray:
    """A per-thread uint16 read buffer of at least `count` elements (grown, never shrunk)."""
    buf = getattr(_SCRATCH, "u2", None)
    if buf is None or buf.size < count:
        buf = _SCRATCH.u2 = np.empty(count, dtype="<u2")
    return buf[:count]


class DictSource(TensorSource):
    def __init__(self, tensors: Mapping[str, np.ndarray], path: str = "<memory>", metadata=None):
        self.path = path
        self.metadata = dict(metadata or {})
        self._t = dict(tensors)

    def keys(self) -> list[str]:
        return list(self._t)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._t[key].shape)

    def dtype(self, key: str) -> str:
        dt = np.dtype(self._t[key].dtype)
        tag = _NUMPY_TO_TAG.get(dt)
        return _DTYPES[tag][0] if tag else str(dt)

    def get(self, key: str) -> np.ndarray:
        arr = self._t[key]
        if np.dtype(arr.dtype) not in _NUMPY_TO_TAG:
            raise UnsupportedError(f"tensor {key!r} has unsupported dtype {arr.dtype}", path=self.path)
        return arr


def load_torch_bin(path: str) -> DictSource:
    """A PyTorch pickle, read only through torch's safe loader (weights_only=True)."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "this adapter is a PyTorch .bin file; install torch to read it safely (weights_only), "
            "or convert it to adapter_model.safetensors",
            path=path,
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad pickles
        raise FormatError(f"cannot read PyTorch file safely ({type(e).__name__}: {e})", path=path) from None
    if not isinstance(state, dict):
        raise FormatError("PyTorch file does not hold a state dict", path=path)
    arrays = {}
    for key, t in state.items():
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact widening
        arrays[key] = t.detach().cpu().numpy()
    return DictSource(arrays, path=path)


def open_safetensors(path: str | Path) -> SafetensorsSource:
    return SafetensorsSource(path)


@cache
def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way POSIX offers, and put it back
    os.umask(mask)
    return mask


def publish_mode(path: str | Path, directory: bool = False) -> None:
    """Give a finished temporary file (0600) or directory (0700) the mode a plain open() / mkdir()
    would have given it under the process umask, before it is renamed into place."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it onto `dest` (atomic on POSIX)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish_mode(tmp)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_safetensors(dest: str | Path, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
    """Write float tensors (fp16/fp32/fp64 numpy arrays) atomically."""
    from safetensors.numpy import save_file

    clean = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with atomic_path(dest) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)


# numpy dtype a stored short name is written from; bf16 arrives as float32 holding bf16 values.
_TAG_OF = {"fp64": "F64", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), round to nearest even (exact for bf16-valued input)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    carry = bits >> 16  # in place from here on: one uint32 temporary
    carry &= 1
    carry += 0x7FFF
    carry += bits
    carry >>= 16
    return carry.astype("<u2")


def _raw(key: str, arr: np.ndarray, dtype: str, dest) -> np.ndarray:
    """One tensor as a C-contiguous little-endian array in its stored dtype (written without a copy)."""
    if dtype not in _TAG_OF:
        raise UnsupportedError(f"cannot write tensor {key!r} as {dtype}", path=dest)
    if dtype == "bf16":
        return bf16_bits(arr)
    return np.ascontiguousarray(arr, dtype=np.dtype(_DTYPES[_TAG_OF[dtype]][1]).newbyteorder("<"))


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
    """Write {key: (array, short dtype)} atomically, any of fp64/fp32/fp16/bf16.

    The file is built by hand (the safetensors numpy API has no bf16): 8-byte little-endian header
    length, JSON header with sorted keys and 8-byte padding, then the raw little-endian data.
    `SafetensorsWriter` writes the same bytes one tensor at a time.
    """
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

    Two layouts.  Without `reserve`: the bytes of `write_safetensors_typed` (tensors in sorted key
    order, the header padded to 8 bytes), assembled at close by copying the data into a second
    file.  With `reserve=N` (a caller's estimate of the header size, e.g. from its layer names):
    the data file starts with N bytes of room for the header and the tensors stay where they were
    written, in the order added; at close the header is written into that room, padded with spaces
    (the format allows trailing whitespace in the header), and the file itself is renamed into
    place, so nothing is copied.  A header that outgrows the room falls back to the copy.
    """

    _CHUNK = 1 << 24  # bytes copied per read when assembling the final file

    def __init__(self, dest: str | Path, reserve: int = 0):
        self.dest = Path(dest)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".data.tmp", dir=self.dest.parent)
        self._data_path = tmp
        self._data = os.fdopen(fd, "w+b")
        self._room = -(-max(reserve, 0) // 8) * 8  # bytes held for the header (a multiple of 8)
        if self._room:
            self._data.write(b" " * (8 + self._room))
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}  # key -> (tag, shape, start, n)
        self._size = 0  # data bytes written after the header room
        self.closed = False

    def add(self, key: str, arr: np.ndarray, dtype: str) -> None:
        raw = _raw(key, arr, dtype, self.dest)
        self._data.write(raw.data.cast("B"))
        self._entries[key] = (_TAG_OF[dtype], list(np.shape(arr)), self._size, raw.nbytes)
        self._size += raw.nbytes

    def close(self, metadata=None) -> None:
        """Write the final file atomically and remove the data file."""
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
            publish_mode(self._data_path)
            os.replace(self._data_path, self.dest)
        except BaseException:
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
            self._data.close()
            if os.path.exists(self._data_path):
                os.unlink(self._data_path)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
