"""`convert`: rewrite a plain LoRA adapter in another format with ΔW preserved exactly.

Each layer's factors are copied unchanged (LoCon Tucker layers are folded into an exact float64
down factor first) and its scale is carried as alpha = scale·r in the target's own convention
(PEFT rank/alpha patterns, kohya per-module `alpha`, diffusers `lora_adapter_metadata`), so
ΔW = scale·up@down is the same matrix on both sides up to the last bit of scale·r/r.

Names.  PEFT paths are module paths of one model; diffusers prefixes them with the pipeline
component ("unet.", "text_encoder.", ...); kohya flattens them ("lora_unet_down_blocks_0_…").  The
kohya flattening cannot be undone in general (module names contain "_"), so kohya → PEFT/diffusers
needs the dotted names that `lorascope convert` stores in the kohya file's metadata
(`lorascope_module_names`); a kohya file without them is refused with that reason.
Not converted (UnsupportedError naming the layer): LyCORIS LoHa/LoKr, DoRA, lora_bias, embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidArgumentError, UnsupportedError
from .formats import diffusers, kohya, load, peft
from .types import Adapter, LayerInfo, LoraDelta, frozen_mapping

TARGETS = ("peft", "kohya", "diffusers")


@dataclass(frozen=True)
class ConvertResult:
    source: str
    source_format: str
    dest: str
    format: str
    n_layers: int


def convert_file(
    src: str | Path,
    dest: str | Path,
    *,
    to: str,
    format: str | None = None,
    component: str | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Read `src` (format detected unless given) and write it to `dest` in format `to`.

    `component` chooses the diffusers component (default "unet") for names that have none, and
    which component to keep when a multi-component diffusers file is converted to PEFT or a
    kohya file to one model's PEFT adapter."""
    if to not in TARGETS:
        raise InvalidArgumentError(f"unknown target format {to!r}; choose from {', '.join(TARGETS)}")
    dest = _dest_file(Path(dest), to)
    _check_dest(Path(src), dest, overwrite)
    adapter = load(src, format=format)
    neutral = _neutral(adapter, to, component)
    if adapter.modules_to_save and to != "peft":
        raise UnsupportedError(
            f"modules_to_save ({', '.join(adapter.modules_to_save)}) are full weights that {to} files "
            "cannot hold",
            path=adapter.path,
        )
    if to == "peft":
        extra = peft.passthrough_tensors(adapter)  # modules_to_save weights, copied unchanged
        peft.write(neutral, dest, base_config=_peft_config(adapter, neutral), extra_tensors=extra)
    elif to == "kohya":
        kohya.write(neutral, dest, metadata=_kohya_metadata(adapter))
    else:
        diffusers.write(neutral, dest, component=component or "unet")
    return ConvertResult(str(src), adapter.format, str(dest), to, len(neutral.layers))


def _dest_file(dest: Path, to: str) -> Path:
    """kohya/diffusers outputs are one .safetensors file; a diffusers directory gets the default name."""
    if to == "peft" or dest.suffix == ".safetensors":
        return dest
    if to == "diffusers":
        return dest / diffusers.WEIGHTS
    raise InvalidArgumentError("a kohya output is one file: give a path ending in .safetensors", path=dest)


def _check_dest(src: Path, dest: Path, overwrite: bool) -> None:
    s, d = src.resolve(), dest.resolve()
    if d == s or s in d.parents or (s.is_file() and d == s.parent):
        raise InvalidArgumentError(f"refusing to overwrite the input {src}", path=dest)
    if dest.exists() and not overwrite and not (dest.is_dir() and not any(dest.iterdir())):
        raise InvalidArgumentError("output already exists; choose a new path (or pass --force)", path=dest)
    if dest.is_dir() and any(dest.iterdir()) and overwrite:
        raise InvalidArgumentError("output is a non-empty directory; choose a new path", path=dest)


def _neutral(adapter: Adapter, to: str, component: str | None) -> Adapter:
    """The adapter with target-ready names and clean LayerInfos; factors still load lazily."""
    infos: list[LayerInfo] = []
    origin: dict[str, LayerInfo] = {}
    for info in adapter.layers:
        _check_convertible(adapter, info)
        name = _target_name(adapter, info, to, component)
        if name is None:
            continue
        dtype = "fp64" if "mid" in info.extras.get("roles", {}) else info.dtype  # folded Tucker: fp64
        extras = {"alpha": info.scale * info.rank}
        if to == "kohya" and adapter.format == "kohya":
            extras["dotted_name"] = info.extras.get("dotted_name", info.name)
        new = replace(info, name=name, dtype=dtype, extras=frozen_mapping(extras))
        infos.append(new)
        origin[name] = info
    if not infos:
        raise InvalidArgumentError(f"no layers of component {component!r} in the adapter", path=adapter.path)

    def loader(info: LayerInfo) -> LoraDelta:
        delta = adapter.loader(origin[info.name])
        return LoraDelta(info, delta.down, delta.up)

    return Adapter(
        format=adapter.format if to == "kohya" else "memory",
        layers=tuple(infos),
        loader=loader,
        path=adapter.path,
    )


def _check_convertible(adapter: Adapter, info: LayerInfo) -> None:
    algo = info.extras.get("algo", "lora")
    why = (
        f"LyCORIS {algo} is not a LoRA" if algo != "lora"
        else "DoRA magnitude vectors have no place in the target" if info.dora
        else "lora_bias has no place in the target" if "bias" in info.extras
        else "embedding LoRA is PEFT-only" if info.kind == "embedding"
        else None
    )  # fmt: skip
    if why:
        raise UnsupportedError(
            f"layer {info.name}: cannot convert ({why}); convert handles plain LoRA", path=adapter.path
        )


def _target_name(adapter: Adapter, info: LayerInfo, to: str, component: str | None) -> str | None:
    """The layer's name in the target format, or None when it belongs to another component."""
    if to == "kohya":
        if adapter.format == "kohya":
            return info.name
        return info.name  # kohya.write flattens dotted names; diffusers names keep their component
    if adapter.format == "kohya":
        if "dotted_name" not in info.extras:
            raise UnsupportedError(
                f"layer {info.name}: kohya names are flattened (module names contain '_') and this file has "
                f"no {kohya.NAMES_KEY} metadata to restore them (only lorascope-written kohya files have it)",
                path=adapter.path,
            )
        name = info.extras["dotted_name"]
    else:
        name = info.name
    if to == "peft":
        return _strip_component(adapter, name, component)
    return name


def _strip_component(adapter: Adapter, name: str, component: str | None) -> str | None:
    head, _, rest = name.partition(".")
    if head not in diffusers.COMPONENTS:
        return name
    present = sorted({x.extras.get("dotted_name", x.name).split(".", 1)[0] for x in adapter.layers})
    present = [c for c in present if c in diffusers.COMPONENTS]
    if component is None and len(present) > 1:
        raise InvalidArgumentError(
            f"the adapter holds several components ({', '.join(present)}); a PEFT adapter is one model: "
            "choose one with --component",
            path=adapter.path,
        )
    return rest if component in (None, head) else None


def _peft_config(adapter: Adapter, neutral: Adapter) -> dict:
    cfg = dict(adapter.config) if adapter.format == "peft" else {"target_modules": sorted(neutral.names)}
    cfg.pop("r", None), cfg.pop("lora_alpha", None)
    cfg.update({"peft_type": "LORA", "use_rslora": False})
    base = adapter.config.get("base_model_name_or_path") or adapter.metadata.get("ss_sd_model_name")
    if base:
        cfg["base_model_name_or_path"] = base
    return cfg


def _kohya_metadata(adapter: Adapter) -> dict[str, str]:
    keep = {k: v for k, v in adapter.metadata.items() if k.startswith("ss_")}
    ranks = {x.rank for x in adapter.layers}
    if len(ranks) == 1:
        keep.setdefault("ss_network_dim", str(ranks.pop()))
    keep.setdefault("ss_network_module", "networks.lora")
    return keep
