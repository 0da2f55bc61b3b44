"""Adapter file formats: an explicit registry of modules with the same verbs and declarations.

Every module in `FORMATS` has `sniff(path)`, `read(path, **options)`, `write(adapter, dest, *,
source=None)`, `model_path(info)`, `match_key(info)` and `SPEC` (a `FormatSpec`); `_contract.py`
states the contract and tests/test_formats_contract.py runs one battery on every entry, so a new
format is one module plus one line here.  Callers go through this registry only:

* `load(path)` detects the format unless one is given.  Detection asks every registered format's
  `sniff`; exactly one must claim the path, otherwise the error says which claimed it (ambiguous)
  or that none did (unknown); a .safetensors file whose header cannot be parsed gets that reason.
* `save(adapter, dest, format=..., source=...)` writes through the format's `write` to
  `output_path(format, dest)`, after `check_writable`.
* `check_dest` (an output must not be, hold or lie inside an input, nor exist non-empty) is shared
  by convert, compress and merge.
* A layer whose factors are two tensors of a .safetensors file is read as their stored bytes
  (`StoredDelta`); every writer copies those bytes unchanged where the output dtype is the stored
  one, instead of decoding and encoding them (convert).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import AdapterNotFoundError, InvalidArgumentError, UnknownFormatError, UnsupportedError
from ..files import check_destination, replacing
from ..types import Adapter, LayerInfo, frozen_mapping
from . import diffusers, kohya, lycoris, peft, ralora
from ._contract import FormatSpec, check_dest, refusal
from ._io import SafetensorsSource, TensorSource, open_safetensors, write_safetensors_typed
from ._keys import COMPONENTS, NAMES_KEY, header_error, match_spelling
from ._peft_config import TASK_HEADS
from ._stored import StoredDelta, StoredFactor

__all__ = [
    "COMPONENTS",
    "FORMATS",
    "NAMES_KEY",
    "FormatSpec",
    "SafetensorsSource",
    "StoredDelta",
    "StoredFactor",
    "TensorSource",
    "check_dest",
    "check_writable",
    "detect",
    "load",
    "match_key",
    "open_safetensors",
    "output_path",
    "save",
    "spec",
    "without_full_weights",
    "write_safetensors_typed",
]

VERBS = ("sniff", "read", "write", "model_path", "match_key")


def _registry(*modules: ModuleType) -> dict[str, ModuleType]:
    table: dict[str, ModuleType] = {}
    for module in modules:
        name = module.__name__.rsplit(".", 1)[-1]
        if name in table:
            raise ValueError(f"format {name!r} registered twice")
        missing = [v for v in VERBS if not callable(getattr(module, v, None))]
        if missing or not isinstance(getattr(module, "SPEC", None), FormatSpec) or module.SPEC.name != name:
            raise ValueError(f"format module {name!r} lacks {missing or 'a SPEC named after it'}")
        table[name] = module
    return table


FORMATS: dict[str, ModuleType] = _registry(peft, kohya, diffusers, lycoris, ralora)


def _module(format: str) -> ModuleType:
    if format not in FORMATS:
        raise InvalidArgumentError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    return FORMATS[format]


def spec(format: str) -> FormatSpec:
    return _module(format).SPEC


def detect(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        why = (
            "a symbolic link whose target is missing or loops"
            if p.is_symlink()
            else "no such file or directory"
        )
        raise AdapterNotFoundError(why, path=p)
    claims = [name for name, module in FORMATS.items() if module.sniff(p)]
    if len(claims) == 1:
        return claims[0]
    if claims:
        raise UnknownFormatError(f"ambiguous format: looks like {' and '.join(claims)}", path=p)
    for candidate in [p] + [p / s.file_name for m in FORMATS.values() if (s := m.SPEC).file_name]:
        corrupt = header_error(candidate)  # a .safetensors file that cannot be parsed: say why
        if corrupt is not None:
            raise corrupt
    raise UnknownFormatError(
        f"unknown adapter format (lorascope reads: {', '.join(FORMATS)}); a PEFT adapter is a "
        "directory with adapter_config.json and adapter_model.safetensors",
        path=p,
    )


def load(path: str | Path, *, format: str | None = None, lora_only: bool = False, **options: Any) -> Adapter:
    """Read an adapter from disk (lazily: factors are read per layer when used).  `lora_only`:
    the adapter without the full weights saved beside its LoRA (`without_full_weights`)."""
    if format is None:
        format = detect(path)
    adapter = _module(format).read(path, **options)
    return without_full_weights(adapter) if lora_only else adapter


def without_full_weights(adapter: Adapter) -> Adapter:
    """The adapter as its LoRA layers alone (convert / compress --lora-only): no modules_to_save
    (writers then neither refuse nor copy them) and a note naming what is left out.  Its config
    gets modules_to_save null, and no task_type where the task's head is part of it (PEFT loads a
    SEQ_CLS, TOKEN_CLS or QUESTION_ANS adapter only with its head; without a task_type it loads the
    LoRA into any model)."""
    if not adapter.modules_to_save:
        return adapter
    config = dict(adapter.config)
    note = f"--lora-only: full weights not written: {', '.join(adapter.modules_to_save)}"
    if "modules_to_save" in config:
        config["modules_to_save"] = None
    task = str(config.get("task_type") or "").upper()
    if task in TASK_HEADS:
        config["task_type"] = None
        note += f"; task_type {task} dropped (PEFT loads that task only with its head)"
    return replace(adapter, modules_to_save=(), config=frozen_mapping(config), notes=(*adapter.notes, note))


def output_path(format: str, dest: str | Path) -> Path:
    """Where `format` writes for `dest`: a directory format writes `dest` itself; a one-file format
    writes `dest` if it ends in .safetensors, else `dest/<SPEC.file_name>` where it has one.  The
    one rule for every command that writes an adapter (convert, compress, merge): what it writes,
    `audit` reads back.  A path that cannot be this output is refused: a one-file format's path
    without .safetensors and no file name to add, an existing directory where a file goes, an
    existing file where a directory goes, a device, pipe or socket."""
    s, dest = spec(format), Path(dest)
    if not (s.directory or dest.suffix == ".safetensors"):
        if not s.file_name:
            raise InvalidArgumentError(
                f"a {format} output is one file: give a path ending in .safetensors", path=dest
            )
        if dest.exists() and not dest.is_dir():
            raise InvalidArgumentError(
                f"a {format} output is a .safetensors file or a directory to hold {s.file_name}", path=dest
            )
        dest = dest / s.file_name
    check_destination(dest, directory=s.directory, overwrite=True)  # the kind of path; existence: check_dest
    return dest


def check_writable(adapter: Adapter, format: str) -> None:
    """Refuse, before any work, an adapter that `format`'s writer cannot hold: LoHa/LoKr layers,
    layer kinds it lacks, DoRA or modules_to_save without pass-through (the writer checks each
    delta again as it writes it)."""
    s = spec(format)
    for info in adapter.layers:
        why = refusal(info, s)
        if why:
            raise UnsupportedError(f"layer {info.name}: cannot write it ({why})", path=adapter.path)
    if adapter.modules_to_save and not s.passthrough:
        raise UnsupportedError(
            f"modules_to_save ({', '.join(adapter.modules_to_save)}) are full weights that {format} files "
            "cannot hold; pass --lora-only to write the LoRA layers without them",
            path=adapter.path,
        )


def save(
    adapter: Adapter,
    dest: str | Path,
    *,
    format: str,
    source: Adapter | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `adapter` in `format` to `output_path(format, dest)`; returns the path written.  The
    output is created exclusively (`_write.publish`); `overwrite` lets an existing regular file be
    replaced (a directory output never replaces anything but an empty directory)."""
    check_writable(adapter, format)
    path = output_path(format, dest)
    if not overwrite:
        return _module(format).write(adapter, path, source=source)
    with replacing(path):
        return _module(format).write(adapter, path, source=source)


def match_key(format: str, info: LayerInfo) -> str:
    """The spelling that matches layers across formats; names of in-memory adapters (no registered
    format) are taken as dotted module paths."""
    if format in FORMATS:
        return FORMATS[format].match_key(info)
    return match_spelling(info.name, info.name)
