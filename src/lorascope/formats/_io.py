# Hand-written: positional reads (no mmap SIGBUS on a truncated file) and bf16 without torch.
"""With `_header.py` (headers), the only module that touches tensor-file bytes.

`TensorSource` is what format readers see: key names, shapes and dtypes from the header, and one
tensor at a time as a numpy array.  Two sources exist:

* `SafetensorsSource`: the header is parsed and every entry's fields checked (`_header.py`: types,
  ranges, byte counts against shapes), the `safetensors` library validates the layout, and each
  tensor is read with positional reads of its exact byte range (never through a memory map: a file
  truncated under one kills the process with SIGBUS).  A short read is "file changed or truncated
  while reading".  numpy has no bfloat16, so `get` widens BF16 tensors to float32 exactly (a bf16 is
  the top 16 bits of a float32).  `stored(key)` reads the same byte range without decoding it
  (`_stored.StoredFactor`): the plain-LoRA readers hand layers on that way, so that writers copy
  a tensor unchanged and the Gram products widen a bf16 tensor's bit patterns block by block.
* `DictSource`: tensors already in memory (PyTorch ``adapter_model.bin``, tests).

Writing lives in `_write.py` (its names are re-exported here for existing callers).
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import FormatError, MissingDependencyError, UnsupportedError
from ..scratch import thread_scratch
from ..types import widen_bf16
from ._header import check_with_library, open_fd, parse_header, pread
from ._stored import StoredFactor
from ._write import (  # noqa: F401  (the tensor-writing names, importable from here too)
    SafetensorsWriter,
    bf16_bits,
    header_room,
    write_safetensors,
    write_safetensors_typed,
)

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

    def stored(self, key: str) -> StoredFactor | None:
        """The tensor's bytes as stored, undecoded (`_stored.StoredFactor`); None where the source
        keeps no file bytes (tensors already in memory)."""
        return None


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
        tag, start, end = self._readable(key)
        kind = _DTYPES[tag][1]
        if kind is None:  # BF16
            raw = thread_scratch("u2", (end - start) // 2, "<u2")  # (count,) reused per thread
            self._read_into(key, raw, start)
            # bf16 -> fp32 is exact: place the 16 stored bits in the high half of a 32-bit word.
            return widen_bf16(raw).reshape(self._entries[key]["shape"])  # one pass: widen and shift
        stored = np.dtype(kind).newbyteorder("<")  # safetensors data are little-endian
        arr = np.empty((end - start) // stored.itemsize, dtype=stored)  # (count,)
        self._read_into(key, arr, start)
        return arr.reshape(self._entries[key]["shape"])

    def stored(self, key: str) -> StoredFactor:
        """The tensor's exact byte range, read by the same checked positional reads as `get`."""
        tag, start, end = self._readable(key)
        kind = _DTYPES[tag][0]
        bits = np.empty((end - start) // StoredFactor.bit_dtype(kind).itemsize, StoredFactor.bit_dtype(kind))
        self._read_into(key, bits, start)  # (count,)
        return StoredFactor(bits, kind, self.shape(key))

    def _readable(self, key: str) -> tuple[str, int, int]:
        """(dtype tag, start, end) of a tensor lorascope reads; another dtype is refused."""
        entry = self._entries[key]
        tag = entry["dtype"]
        if tag not in _DTYPES:
            raise UnsupportedError(
                f"tensor {key!r} has dtype {tag}; lorascope reads F64, F32, F16 and BF16", path=self.path
            )
        start, end = entry["data_offsets"]
        return tag, start, end

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
        else:  # no preadv (older macOS, Windows): read, then copy
            chunk = pread(fd, n - done, offset + done)
            got = len(chunk)
            view[done : done + got] = chunk
        if got <= 0:
            break
        done += got
    return done


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


def _code_hint(path: str) -> str:
    """How to convert a .bin the user trusts into safetensors (which holds no code) with torch itself."""
    dest = str(Path(path).with_name("adapter_model.safetensors"))
    return (
        "run this only if you trust the file and where it came from; it converts it to safetensors, "
        'which holds no code: python -c "import torch, safetensors.torch as st; '
        f"sd = torch.load({path!r}, weights_only=False); "
        f'st.save_file({{k: v.contiguous() for k, v in sd.items()}}, {dest!r})"'
    )


def load_torch_bin(path: str) -> DictSource:
    """A PyTorch pickle, read only through torch's safe loader (weights_only=True).

    A pickle that would import or call code is refused with that fact and how to convert a trusted
    file; torch's own advice (retry with weights_only=False) is never relayed.  Every value of the
    state dict must be a float tensor: anything else is a FormatError naming the key."""
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
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):  # a damaged pickle, not one that asks for code
            raise FormatError(f"cannot read PyTorch file ({_first_line(e)})", path=path) from None
        raise FormatError(  # torch's safe loader refused a pickle that imports or calls code
            "the file holds Python code (a pickle that imports or calls functions), which lorascope "
            "will not run",
            path=path,
            hint=_code_hint(path),
        ) from None
    except Exception as e:  # torch raises many types for damaged files
        raise FormatError(
            f"cannot read PyTorch file ({type(e).__name__}: {_first_line(e)})", path=path
        ) from None
    if not isinstance(state, dict):
        raise FormatError("PyTorch file does not hold a state dict", path=path)
    arrays = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise FormatError(
                f"state dict entry {str(key)!r} is not a tensor (it holds a {type(t).__name__})",
                path=path,
                keys=[str(key)],
            )
        if t.dtype == torch.bfloat16:
            t = t.float()  # exact widening
        arrays[str(key)] = t.detach().cpu().numpy()
    return DictSource(arrays, path=path)


def _first_line(e: Exception) -> str:
    """The first line of an exception's text, without any advice to load with weights_only=False."""
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return "" if "weights_only" in line else line


def open_safetensors(path: str | Path) -> SafetensorsSource:
    return SafetensorsSource(path)
