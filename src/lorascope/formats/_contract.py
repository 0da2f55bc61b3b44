"""The format contract: what every module in `FORMATS` declares, and the checks they share.

Every format module has the same verbs with the same signatures (tests/test_formats_contract.py
checks them with `inspect.signature` and runs one battery on every registered format):

    sniff(path) -> bool                        does this format claim the file or directory?
    read(path, **options) -> Adapter           options: SPEC.read_options; anything else is an
                                               InvalidArgumentError naming the option and the format
    write(adapter, dest, *, source=None) -> Path
    model_path(info) -> str | None             the layer's dotted module path (with its pipeline
                                               component, "unet.…", where it has one), or None when
                                               the format's name cannot be turned back into one
    match_key(info) -> str                     the spelling layers of different formats are matched
                                               on (kohya's flattened names, first text encoder "lora_te1_")
    SPEC: FormatSpec                           the facts callers route on (below)

Writers.  `source` is the adapter the output derives from (None: the adapter itself); a writer
takes from it what its format needs (PEFT: the base config and the pass-through tensors of a PEFT
adapter on disk; kohya: `ss_*` metadata).  Every per-layer fact (name, kind, rank, scale, dtype,
shapes) comes from the delta being written (`delta.info` of `adapter.iter_deltas()`), and configs,
headers and metadata are built after the last layer, so a derived adapter (compress, merge) may
decide a layer's rank while computing it.  Factors are stored in `info.dtype` (bf16 arrives as
float32 holding bf16 values; a wider array is never narrowed) and alpha = scale·rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from ..files import check_destination, resolved
from ..types import DTYPE_BYTES, LayerInfo, LoraDelta
from ._stored import StoredDelta


@dataclass(frozen=True)
class FormatSpec:
    """What callers (convert, compress, merge) need to know about a format, declared once per module.
    Every field is required: a new format states each fact instead of inheriting a default."""

    name: str  # the registry name, also `Adapter.format` of what `read` returns
    read_options: Mapping[str, type]  # what read(**options) accepts; None always means "not given"
    directory: bool  # the output is a directory; else one .safetensors file
    file_name: str | None  # one-file formats: the name a directory destination gets (None: refused)
    kinds: tuple[str, ...]  # layer kinds `write` can hold
    flat_names: bool  # layer names are flattened paths ("lora_unet_a_b"), not dotted ones
    components: bool  # names may carry a pipeline component; False: the file is one model
    passthrough: bool  # `write` copies a same-format source's other tensors (DoRA magnitudes,
    #                    lora_bias, modules_to_save weights)


def read_options(spec: FormatSpec, options: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Every option `spec` declares (None where not given); an unknown or wrongly typed one is an
    error.  None always means "not given", so generic callers may pass `adapter_name=None` to any format."""
    for name, value in options.items():
        if value is None:
            continue
        if name not in spec.read_options:
            takes = ", ".join(spec.read_options) or "none"
            raise InvalidArgumentError(
                f"the {spec.name} format takes no read option {name!r} (its read options: {takes})", path=path
            )
        want = spec.read_options[name]
        if not isinstance(value, want):
            raise InvalidArgumentError(
                f"read option {name!r} of the {spec.name} format must be a {want.__name__}, "
                f"got {type(value).__name__} {value!r}",
                path=path,
            )
    return {name: options.get(name) for name in spec.read_options}


def check_dest(
    dest: str | Path,
    inputs: Iterable[str | Path | None] = (),
    *,
    overwrite: bool = False,
    replace_flag: str | None = None,
) -> Path:
    """Refuse an output that is, holds or lies inside an input, an existing non-empty directory,
    anything existing that is neither a regular file nor a directory (a device, pipe or socket),
    and an existing file unless `overwrite` (never a directory, never an input).

    `replace_flag` names the option that sets `overwrite` (convert's "--force") so that the error
    for an existing file says how to replace it.  Returns `dest` as a Path."""
    dest = Path(dest)
    d = resolved(dest)
    for src in inputs:
        if src is None:
            continue
        s = resolved(src)
        if d == s or s in d.parents or d in s.parents:
            raise InvalidArgumentError(f"refusing to overwrite the input {src}", path=dest)
    if dest.is_dir() and any(dest.iterdir()):
        again = f"; {replace_flag} replaces a file, never a directory" if replace_flag and overwrite else ""
        raise InvalidArgumentError(
            f"output already exists and is a non-empty directory{again}; choose a new path", path=dest
        )
    try:
        check_destination(dest, directory=dest.is_dir(), overwrite=overwrite)
    except InvalidArgumentError as e:
        if replace_flag and e.message == "output already exists; choose a new path":
            raise InvalidArgumentError(
                f"output already exists; choose a new path or pass {replace_flag} to replace it", path=dest
            ) from None
        raise
    return dest


def refusal(info: LayerInfo, spec: FormatSpec) -> str | None:
    """Why `spec`'s writer cannot hold this layer (None: it can).  Writers hold plain LoRA layers."""
    algo = info.extras.get("algo", "lora")
    if algo != "lora":
        return f"LyCORIS {algo} is not a LoRA; writers hold plain LoRA layers"
    if info.kind not in spec.kinds:
        return f"{spec.name} files hold {'/'.join(spec.kinds)} layers, not {info.kind}"
    if info.dora and not spec.passthrough:
        return f"{spec.name} files cannot hold DoRA magnitude vectors"
    return None


_NP_NAMES = {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32", np.dtype(np.float64): "fp64"}

Stored = tuple[Any, str]  # (array or StoredFactor, dtype to store it in), as SafetensorsWriter.add takes them


def storage_dtype(arr: Any, dtype: str) -> str:
    """The layer's dtype, unless the array is a wider float: never narrows (a LoCon Tucker layer's
    folded down factor is exact float64 beside fp16 storage).  bf16 layers arrive as float32
    holding bf16 values and are stored as bf16.  `arr`: anything with a numpy `dtype`."""
    own = _NP_NAMES.get(np.dtype(arr.dtype), "fp64")
    if dtype == "bf16" and own == "fp32":
        return "bf16"
    return own if DTYPE_BYTES[own] > DTYPE_BYTES.get(dtype, 0) else dtype


def stored_factors(
    delta: LoraDelta, spec: FormatSpec, path: str | None, *, keep_stored: bool = False
) -> tuple[Stored, Stored]:
    """(down, dtype), (up, dtype) in their stored shapes: (r, in) / (out, r), or for conv with a known
    weight shape (r, c_in, kh, kw) / (out, r, 1, 1).  Refuses a layer the format cannot hold and
    factors whose shapes disagree with `delta.info` (a LoHa/LoKr layer's factors have more columns
    than its rank).  `keep_stored`: a `StoredDelta`'s factors stay `StoredFactor`s (undecoded), for
    a writer that hands them straight to `SafetensorsWriter.add`; the dtype is the one its decoded
    array would get, so the bytes written are the same either way."""
    info = delta.info
    why = refusal(info, spec)
    r = info.rank
    down, up = delta.stored if keep_stored and isinstance(delta, StoredDelta) else (delta.down, delta.up)
    fits = down.shape == (r, info.in_features) and up.shape == (info.out_features, r)
    if why is None and not fits:
        why = f"factors {list(down.shape)} / {list(up.shape)} do not have rank {r}"
    if why:
        raise UnsupportedError(f"layer {info.name}: cannot write it ({why})", path=path)
    if info.kind == "conv" and info.weight_shape:
        ones = (1,) * (len(info.weight_shape) - 2)
        down, up = down.reshape(r, *info.weight_shape[1:]), up.reshape(info.out_features, r, *ones)
    return (down, storage_dtype(down, info.dtype)), (up, storage_dtype(up, info.dtype))
