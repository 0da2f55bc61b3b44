"""`convert`: rewrite a plain LoRA adapter in another format with ΔW preserved exactly.

Each layer's factors are copied unchanged (LoCon Tucker layers are folded into an exact float64
down factor first; factors read from a .safetensors file are copied as their stored bytes, never
decoded and encoded again: `formats.StoredDelta`) and its scale is carried as alpha = scale·r in
the target's own convention (PEFT rank/alpha patterns, kohya / LyCORIS per-module `alpha`,
diffusers `lora_adapter_metadata`), so ΔW = scale·up@down is the same matrix on both sides up
to the last bit of scale·r/r.

Everything format-specific comes from the registry (`formats.FORMATS`): the target's `SPEC` and
`write`, the source's `model_path`.  Names: within one format they are kept.  Across formats a
layer goes by its dotted module path (`model_path`: PEFT paths, diffusers paths with their pipeline
component); the target's writer spells it (kohya and LyCORIS flatten it, diffusers prefixes
`unet.` when it has no component).  A target that is one model (`SPEC.components` false: PEFT)
gets the paths without their component, of one component (`component` chooses it when the source
holds several); otherwise `component` is the prefix for paths without one.  Flattened names
cannot be undone in general (module names contain "_"): a kohya / LyCORIS file without the dotted
names lorascope stores in its metadata converts only to another flat-named format.
Not converted (UnsupportedError naming the layer): LyCORIS LoHa/LoKr, DoRA, lora_bias, and layer
kinds the target does not hold (embedding LoRA outside PEFT).  A factor holding NaN/Inf is refused
(FormatError naming the file, the layer and the tensor key) and nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidArgumentError, UnsupportedError
from .formats import (
    COMPONENTS,
    FORMATS,
    NAMES_KEY,
    StoredDelta,
    check_dest,
    check_writable,
    load,
    output_path,
    save,
    spec,
)
from .parallel import ordered_map
from .passes import check_factors, nonfinite_error
from .types import Adapter, LayerInfo, LoraDelta, frozen_mapping


@dataclass(frozen=True)
class ConvertResult:
    source: str
    source_format: str
    dest: str
    format: str
    n_layers: int
    notes: tuple[str, ...] = ()  # e.g. the full weights --lora-only left out


def convert_file(
    src: str | Path,
    dest: str | Path,
    *,
    to: str,
    format: str | None = None,
    component: str | None = None,
    overwrite: bool = False,
    lora_only: bool = False,
) -> ConvertResult:
    """Read `src` (format detected unless given) and write it to `dest` in format `to`.

    `component` is the pipeline component (unet, text_encoder, ...) to give names without one, or
    to keep when a multi-component adapter is converted to a one-model format (PEFT).  `lora_only`
    writes the LoRA layers without the full weights saved beside them (modules_to_save, a
    classification head, embeddings), which only PEFT can hold; a note names them."""
    if component is not None and component not in COMPONENTS:
        raise InvalidArgumentError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
    dest = check_dest(output_path(to, dest), [src], overwrite=overwrite, replace_flag="--force")
    adapter = load(src, format=format, lora_only=lora_only)
    # again against the adapter as read: a PEFT directory may have been given by its weights file
    check_dest(dest, [adapter.path], overwrite=overwrite, replace_flag="--force")
    neutral = retarget(adapter, to, component)
    # Layers are read and checked ahead on worker threads while the writer writes the previous
    # ones (positional reads, the NaN/Inf check and writes release the GIL); a few in flight.
    ahead = replace(neutral, stream=lambda: ordered_map(neutral.loader, neutral.layers))
    written = save(ahead, dest, format=to, source=adapter, overwrite=overwrite)
    notes = tuple(n for n in adapter.notes if n.startswith("--lora-only"))
    return ConvertResult(str(src), adapter.format, str(written), to, len(neutral.layers), notes)


def retarget(adapter: Adapter, to: str, component: str | None = None) -> Adapter:
    """The adapter with the names and clean LayerInfos format `to`'s writer needs, checked writable;
    factors still load lazily (compress --to uses it to truncate and convert in one pass), as their
    stored bytes where the source has them (`formats.StoredDelta`: decoded when first used)."""
    infos: list[LayerInfo] = []
    origin: dict[str, LayerInfo] = {}
    if to != adapter.format and not spec(to).components:  # one model: one component at most
        component = _one_component(adapter, to, component)
    for info in adapter.layers:
        _check_convertible(adapter, info)
        name = _target_name(adapter, info, to, component)
        if name is None:
            continue
        dtype = "fp64" if "mid" in info.extras.get("roles", {}) else info.dtype  # folded Tucker: fp64
        extras = {"alpha": info.scale * info.rank}
        if to == adapter.format and "dotted_name" in info.extras:
            extras["dotted_name"] = info.extras["dotted_name"]
        new = replace(info, name=name, dtype=dtype, extras=frozen_mapping(extras))
        infos.append(new)
        origin[name] = info
    if not infos:
        raise InvalidArgumentError(f"no layers of component {component!r} in the adapter", path=adapter.path)

    def loader(info: LayerInfo) -> LoraDelta:
        read_as = origin[info.name]  # the layer as the source names it
        delta = adapter.loader(read_as)
        if isinstance(delta, StoredDelta):  # the bytes as stored: written back without decoding
            which = delta.nonfinite()  # copied unchanged, NaN/Inf would be too: refused instead
            if which is not None:
                raise nonfinite_error(read_as, which, adapter.path)
            return delta.relabel(info)
        check_factors(delta, adapter.path)
        return LoraDelta(info, delta.down, delta.up)

    out = Adapter(
        format=adapter.format,
        layers=tuple(infos),
        loader=loader,
        path=adapter.path,
        config=adapter.config,
        metadata=adapter.metadata,
        modules_to_save=adapter.modules_to_save,
        notes=adapter.notes,
    )
    check_writable(out, to)
    return out


def _check_convertible(adapter: Adapter, info: LayerInfo) -> None:
    algo = info.extras.get("algo", "lora")
    why = (
        f"LyCORIS {algo} is not a LoRA" if algo != "lora"
        else "DoRA magnitude vectors have no place in the target" if info.dora
        else "lora_bias has no place in the target" if "bias" in info.extras
        else None
    )  # fmt: skip
    if why:
        raise UnsupportedError(
            f"layer {info.name}: cannot convert ({why}); convert handles plain LoRA", path=adapter.path
        )


def _target_name(adapter: Adapter, info: LayerInfo, to: str, component: str | None) -> str | None:
    """The layer's name for the target's writer, or None when it belongs to another component."""
    if to == adapter.format:
        return info.name
    target = spec(to)
    path = FORMATS[adapter.format].model_path(info)
    if path is None:
        if target.flat_names:
            return info.name  # flattened name → flattened name, as it is
        raise UnsupportedError(
            f"layer {info.name}: {adapter.format} names are flattened (module names contain '_') and this "
            f"file has no {NAMES_KEY} metadata to restore them (only lorascope-written files have it)",
            path=adapter.path,
        )
    head, _, rest = path.partition(".")
    if not (head in COMPONENTS and rest):  # no pipeline component
        return f"{component}.{path}" if component and target.components else path
    if target.components:
        return path
    return rest if component in (None, head) else None


def _one_component(adapter: Adapter, to: str, component: str | None) -> str | None:
    """The component a one-model target keeps: `component`, or the only one the adapter has."""
    module = FORMATS[adapter.format]
    paths = (module.model_path(x) for x in adapter.layers)
    present = sorted({p.split(".", 1)[0] for p in paths if p is not None and "." in p} & set(COMPONENTS))
    if component is None and len(present) > 1:
        raise InvalidArgumentError(
            f"the adapter holds several components ({', '.join(present)}); a {to} adapter is one model: "
            "choose one with --component",
            path=adapter.path,
        )
    return component
