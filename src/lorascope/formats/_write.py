"""Writing files: every output appears complete or not at all, is created exclusively, and no
temporary survives an error.

* `atomic_path(dest)` yields a temporary path beside `dest`; `publish` then gives the file its
  umask mode and links it to `dest`, which fails if `dest` exists (a race with another writer, or
  a destination that appeared after the checks): outputs are never replaced silently.  Where the
  file system has no hard links, the name is claimed with O_EXCL first and the file renamed onto
  it.  Inside `replacing(dest)` (convert --force) an existing regular file is replaced instead.
* `check_destination(dest)` refuses what cannot become an output: a device, pipe or socket
  (`-o /dev/null` would have been replaced by a regular file), a directory where a file is
  written, a symlink loop, an existing file unless replacing is allowed.
* Any OSError while writing (no space left, permissions) is one `WriteError` naming `dest`, after
  the temporary file (or directory) is removed.
* `SafetensorsWriter` streams tensors one at a time (memory: one tensor) and produces the same
  bytes as `write_safetensors_typed` (layout in its docstring).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import numpy as np

from ..errors import FormatError, InvalidArgumentError, LorascopeError, UnsupportedError, WriteError

_NUMPY = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16}
# safetensors tag each short dtype name is written as; bf16 arrives as float32 holding bf16 values.
_TAG_OF = {"fp64": "F64", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}
_REPLACE: ContextVar[frozenset[str]] = ContextVar("lorascope_replace", default=frozenset())


def _tempfile():
    """tempfile, imported on the first write (it pulls shutil, random, bz2: start-up time of reads)."""
    import tempfile

    return tempfile


@contextmanager
def replacing(dest: str | Path) -> Iterator[None]:
    """Inside this block, an existing regular file at `dest` may be replaced (convert --force)."""
    token = _REPLACE.set(_REPLACE.get() | {os.path.abspath(dest)})
    try:
        yield
    finally:
        _REPLACE.reset(token)


def _may_replace(dest: str | Path) -> bool:
    return os.path.abspath(dest) in _REPLACE.get()


def check_destination(dest: str | Path, *, directory: bool = False, overwrite: bool = False) -> None:
    """Refuse a destination that cannot become this output (module docstring); `directory`: the
    output is a directory (an existing one is left to the caller's emptiness check)."""
    try:
        st = os.stat(dest)  # follows symlinks: /dev/stdout is what it points to
    except FileNotFoundError:
        return
    except OSError as e:  # ELOOP, ENOTDIR, EACCES
        why = "symlink loop" if e.errno == errno.ELOOP else e.strerror
        raise InvalidArgumentError(f"cannot resolve the path ({why})", path=dest) from None
    if stat.S_ISDIR(st.st_mode):
        if not directory:
            raise InvalidArgumentError("output is a directory; give a file path", path=dest)
    elif not stat.S_ISREG(st.st_mode):
        raise InvalidArgumentError(
            "output exists and is not a regular file (a device, pipe or socket); choose a new path", path=dest
        )
    elif directory:
        raise InvalidArgumentError("output exists and is a file; this output is a directory", path=dest)
    elif not (overwrite or _may_replace(dest)):
        raise InvalidArgumentError("output already exists; choose a new path", path=dest)


@contextmanager
def writing(dest: str | Path) -> Iterator[None]:
    """Turn an OSError raised while writing `dest` into one WriteError naming it."""
    try:
        yield
    except LorascopeError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write ({e.strerror or e})", path=dest) from None


@cache
def _umask() -> int:
    mask = os.umask(0o022)  # read it the only way POSIX offers, and put it back
    os.umask(mask)
    return mask


def publish_mode(path: str | Path, directory: bool = False) -> None:
    """Give a finished temporary file (0600) or directory (0700) the mode a plain open() / mkdir()
    would have given it under the process umask, before it is renamed into place."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def publish(tmp: str | Path, dest: str | Path) -> None:
    """Give the finished temporary file `tmp` its mode and put it at `dest`, exclusively unless
    `replacing(dest)` is in force (module docstring).  On error `tmp` is left for the caller."""
    publish_mode(tmp)
    if _may_replace(dest):
        check_destination(dest, overwrite=True)
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest exists, whatever it is
    except FileExistsError:
        raise InvalidArgumentError("output already exists; choose a new path", path=dest) from None
    except OSError:  # no hard links on this file system: claim the name, then rename onto it
        try:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise InvalidArgumentError("output already exists; choose a new path", path=dest) from None
        os.replace(tmp, dest)
    else:
        os.unlink(tmp)


def publish_dir(tmp: str | Path, dest: str | Path) -> None:
    """Put the finished temporary directory `tmp` at `dest` (absent or an empty directory); a
    `dest` that another writer filled meanwhile is refused, not merged."""
    publish_mode(tmp, directory=True)  # mkdtemp made it 0700
    try:
        if os.path.isdir(dest) and not os.path.islink(dest):
            os.rmdir(dest)  # empty (checked); os.rename cannot replace a directory portably
        os.rename(tmp, dest)
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise InvalidArgumentError("output already exists; choose a new path", path=dest) from None
        raise


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success publish it at `dest`.  On any error the
    temporary is removed and an OSError becomes one WriteError naming `dest`."""
    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _tempfile().mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            publish(tmp, dest)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success publish it at `dest` (publish_dir).
    On any error the temporary directory is removed and an OSError becomes one WriteError."""
    import shutil

    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(_tempfile().mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            yield tmp
            publish_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
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
        self.closed = True  # until the data file exists: abort() has nothing to remove
        with writing(self.dest):
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _tempfile().mkstemp(
                prefix=f".{self.dest.name}.", suffix=".data.tmp", dir=self.dest.parent
            )
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

    def add(self, key: str, arr: np.ndarray, dtype: str) -> None:
        raw = _raw(key, arr, dtype, self.dest)
        with writing(self.dest):
            self._data.write(raw.data.cast("B"))
        self._entries[key] = (_TAG_OF[dtype], list(np.shape(arr)), self._size, raw.nbytes)
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
            publish(self._data_path, self.dest)
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
