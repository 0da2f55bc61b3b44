"""The public file I/O core: every output lorascope writes, and every text file a user hands it.

Every capability writes and reads through this module; nothing else touches `os.link`,
temporary names or `json.loads` on a user's text.

Writing: an output appears complete or not at all, is created exclusively, and no temporary
survives an error.

* `atomic_path(dest)` yields a temporary path beside `dest`; on success `publish_file` gives the
  file its umask mode and links it to `dest`, which fails if `dest` exists (a race with another
  writer, or a destination that appeared after the checks): outputs are never replaced silently.
  Where the file system has no hard links, the name is claimed with O_EXCL first and the file
  renamed onto it.  `write_text(dest, text, replace=True)` (and `replacing(dest)`, for convert
  --force) replaces an existing regular file instead: a result a resumed run writes again.
* `atomic_dir(dest)` builds a directory output in a temporary folder and publishes it whole.
* `check_destination(dest)` refuses what cannot become an output: a device, pipe or socket (`-o
  /dev/null` would have been replaced by a regular file), a directory where a file is written, a
  symlink loop, an existing file unless replacing is allowed.
* Any OSError while writing (no space left, permissions) is one `WriteError` naming `dest`, after
  the temporary file (or directory) is removed.

Reading a user's file (configs, plans, labels, data): `read_text` (missing file: an
`InputNotFoundError` that says what was expected; not UTF-8: one line), `json_loads` (every way
`json` can fail, the RecursionError and digit-limit ValueError included, is one FormatError),
`parse_text` (JSON or YAML) and `read_mapping` (a file whose top level must be a mapping).
Checking the mapping's keys is `lorascope.validate`'s job.

Left out on purpose: fsync of outputs (a crash may lose the last file written, never leave a
half-written one under its final name), and file locking between concurrent lorascope processes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Any

from . import jsontext
from .errors import (
    FormatError,
    InputNotFoundError,
    InvalidArgumentError,
    LorascopeError,
    MissingDependencyError,
    WriteError,
)

_REPLACE: ContextVar[frozenset[str]] = ContextVar("lorascope_replace", default=frozenset())
YAML_SUFFIXES = (".yaml", ".yml")


def _tempfile():
    """tempfile, imported on the first write (it pulls shutil, random, bz2: start-up time of reads)."""
    import tempfile

    return tempfile


# --- writing -------------------------------------------------------------------------------------


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


def resolved(path: str | Path) -> Path:
    """`Path.resolve()`, with a symlink loop as one InvalidArgumentError naming the path (Python
    3.11 raises RuntimeError for a loop; later versions may raise OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        why = "symlink loop" if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP else e
        raise InvalidArgumentError(f"cannot resolve the path ({why})", path=path) from None


def check_parent(dest: str | Path) -> None:
    """Refuse an output whose folder does not exist: outputs named on a command line never create
    directories silently (a typo in a folder name is an error, not a new tree)."""
    parent = Path(dest).parent
    if not parent.is_dir():
        raise InvalidArgumentError(f"the folder {parent} does not exist; create it first", path=dest)


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


def publish_file(tmp: str | Path, dest: str | Path) -> None:
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
        try:
            os.replace(tmp, dest)
        except BaseException:  # the claimed name must not stay behind as an empty output
            os.unlink(dest)
            raise
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


def temp_beside(dest: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """(fd, path) of a new 0600 temporary file named after `dest`, in `dest`'s folder (created if
    missing), so that publishing it is a rename on one file system."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _tempfile().mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success publish it at `dest`.  On any error the
    temporary is removed and an OSError becomes one WriteError naming `dest`."""
    dest = Path(dest)
    with writing(dest):
        fd, tmp = temp_beside(dest)
        os.close(fd)
        try:
            yield Path(tmp)
            publish_file(tmp, dest)
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


def write_text(dest: str | Path, text: str, *, replace: bool = False) -> None:
    """Write `text` (UTF-8) at `dest` atomically; exclusively unless `replace` (an existing regular
    file is then replaced in one rename)."""
    if replace:
        with replacing(dest), atomic_path(dest) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | Path, doc: Any, *, replace: bool = False) -> None:
    """Write `doc` as strict JSON (`jsontext.dumps` layout, a final newline) at `dest` atomically."""
    text = jsontext.dumps(doc) if isinstance(doc, dict) else json.dumps(doc, indent=2, allow_nan=False)
    write_text(dest, text + "\n", replace=replace)


# --- reading a user's file -----------------------------------------------------------------------


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a user's file; a missing file is an InputNotFoundError naming `what`."""
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{what} not found", path=p)
    if not p.is_file():
        raise InputNotFoundError(f"{what} expected, found a directory or special file", path=p)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text (byte {exc.start})", path=p) from None
    except OSError as exc:
        raise FormatError(f"cannot read ({exc.strerror or exc})", path=p) from None


def json_loads(raw: str | bytes, path: str | Path | None, wrap: str = "{}") -> Any:
    """json.loads whose every failure is one FormatError: `wrap` (a format string with one {})
    receives the reason.  Covers what json raises beyond JSONDecodeError: UnicodeDecodeError, a
    RecursionError for deeply nested arrays, a ValueError for integers of more than 4300 digits."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        why = f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    except RecursionError:
        why = "JSON nested too deeply"
    except ValueError:  # an integer longer than sys.get_int_max_str_digits()
        why = "a JSON number has too many digits"
    raise FormatError(wrap.format(why), path=path)


def yaml_module():
    """PyYAML, or one MissingDependencyError that says how to do without it."""
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError(
            "YAML files need PyYAML (pip install pyyaml); or give the same content as .json"
        ) from None
    return yaml


def parse_text(text: str, path: str | Path, *, yaml: bool | None = None) -> Any:
    """JSON or YAML text -> data (YAML when `yaml`, or by default when the name ends in .yaml/.yml);
    every way parsing can fail is one FormatError naming the file."""
    if yaml is None:
        yaml = Path(path).suffix.lower() in YAML_SUFFIXES
    if not yaml:
        return json_loads(text, path, "{}")
    module = yaml_module()
    try:
        return module.safe_load(text)
    except RecursionError:
        raise FormatError("YAML nested too deeply", path=path) from None
    except ValueError:  # an integer over Python's digit limit (sys.get_int_max_str_digits())
        raise FormatError("a YAML number has too many digits", path=path) from None
    except Exception as exc:  # yaml.YAMLError and friends
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"not valid YAML: {first}", path=path) from None


def read_mapping(path: str | Path, what: str = "file", *, yaml: bool | None = None) -> dict[str, Any]:
    """A user's JSON/YAML file whose top level is a mapping."""
    data = parse_text(read_text(path, what), path, yaml=yaml)
    if not isinstance(data, dict):
        raise FormatError(f"{what}: expected a mapping at the top level", path=path)
    return data


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file (lorascope's own outputs read back, or a user's), every failure one line."""
    return json_loads(read_text(path, what), path)


__all__ = [
    "YAML_SUFFIXES",
    "atomic_dir",
    "atomic_path",
    "check_destination",
    "check_parent",
    "json_loads",
    "parse_text",
    "publish_dir",
    "publish_file",
    "publish_mode",
    "read_json",
    "read_mapping",
    "read_text",
    "replacing",
    "resolved",
    "temp_beside",
    "write_json",
    "write_text",
    "writing",
    "yaml_module",
]
