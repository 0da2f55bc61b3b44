# Hand-written: every header field is checked before any allocation: a hostile header is one error.
"""The safetensors header: read, parse and check before anything uses it (with `_io.py`, the only
code touching tensor-file bytes).

`parse_header(fd, size, path)` returns the header of an open file and where its data start, after
checking every entry's fields (`dtype` a string, `shape` non-negative integers, `data_offsets` two
non-negative integers in order, the byte count matching shape × dtype width, the data inside the
file, `__metadata__` strings to strings).  `check_with_library` then lets the safetensors library
validate the layout (overlaps, coverage).  `files.json_loads` is the one JSON parser for text from a
user's file (headers, `adapter_config.json`, metadata values): every failure is one FormatError,
including the RecursionError and ValueError json raises beyond JSONDecodeError.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import struct
import threading
from typing import Any

from ..errors import AdapterNotFoundError, FormatError
from ..files import json_loads

# --- the header ----------------------------------------------------------------------------------

_MAX_HEADER = 100_000_000  # bytes; the safetensors library's own limit
# bytes per element of the whole-byte dtypes safetensors defines: their byte counts are checked
# against the shape (reading any but F64/F32/F16/BF16 is refused in `get`)
_WIDTHS = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
    "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def open_fd(path: str) -> int:
    if not os.path.isfile(path):
        raise AdapterNotFoundError("file not found", path=path)
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise FormatError(f"cannot open: {e.strerror}", path=path) from None


_SEEK = threading.Lock()  # where there is no os.pread: seek + read under one lock


def pread(fd: int, n: int, offset: int) -> bytes:
    """Up to `n` bytes at `offset` of the open file `fd`; safe to call from several threads."""
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    with _SEEK:  # pragma: no cover - platforms without pread (Windows)
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


def parse_header(fd: int, size: int, path: str) -> tuple[dict, int]:
    """The validated header of the open file and where its data start (8 + header length)."""
    head = pread(fd, 8, 0)
    if len(head) < 8:
        raise FormatError("not a safetensors file (shorter than its 8-byte header length)", path=path)
    n = struct.unpack("<Q", head)[0]
    if n > size - 8 or n > _MAX_HEADER:
        raise FormatError(f"not a safetensors file (header length {n} exceeds file size {size})", path=path)
    raw = pread(fd, n, 8)
    if len(raw) != n:
        raise FormatError("file changed or truncated while reading its header", path=path)
    header = json_loads(raw, path, "not a safetensors file (header is not JSON: {})")
    if not isinstance(header, dict):
        raise FormatError("not a safetensors file (header is not a JSON object)", path=path)
    _check_entries(header, size - 8 - n, path)
    return header, 8 + n


def _check_entries(header: dict, data_len: int, path: str) -> None:
    """Every field of every entry has its type and range before anything uses it."""
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise FormatError("invalid safetensors header: __metadata__ must map strings to strings", path=path)
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        why = _entry_problem(entry)
        if why:
            raise FormatError(f"invalid safetensors header: tensor {key!r}: {why}", path=path, keys=[key])
        start, end = entry["data_offsets"]
        if end > data_len:
            raise FormatError(
                f"truncated safetensors file: tensor {key!r} ends at byte {end} but only {data_len} "
                "data bytes are present",
                path=path,
                keys=[key],
            )


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "an entry must be an object with dtype, shape and data_offsets"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        return f"dtype must be a string, got {short_repr(dtype)}"
    if not (isinstance(shape, list) and all(_natural(d) for d in shape)):
        return f"shape must be a list of non-negative integers, got {short_repr(shape)}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(x) for x in offsets)):
        return f"data_offsets must be [start, end], two non-negative integers, got {short_repr(offsets)}"
    start, end = offsets
    if start > end:
        return f"data_offsets [{start}, {end}] end before they start"
    width = _WIDTHS.get(dtype)
    if width is not None and math.prod(shape) * width != end - start:
        need = math.prod(shape) * width
        return f"shape {shape} of {dtype} needs {need} bytes, data_offsets give {end - start}"
    return None


def _natural(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def short_repr(value: Any) -> str:
    """A value from a user's file, for a one-line message: JSON's null/true/false, long lists,
    strings, numbers and nesting cut short."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = (
    2,
    6,
    4,
    40,
    40,
    40,
)


def read_header(path: str) -> dict:
    """The validated header of the file at `path` (for sniffing: nothing else is read)."""
    fd = open_fd(path)
    try:
        return parse_header(fd, os.fstat(fd).st_size, path)[0]
    finally:
        os.close(fd)


def check_with_library(path: str) -> None:
    """Let the safetensors library check offsets, overlaps and coverage; re-raise as one line.  Its
    handle (a memory map) is closed at once: tensors are read with positional reads."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np"):
            pass
    except SafetensorError as e:
        raise FormatError(f"invalid safetensors file ({e})", path=path) from None
