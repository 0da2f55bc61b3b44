"""Hugging Face PEFT LoRA adapters: a directory with adapter_config.json + adapter_model.safetensors.

Scaling follows PEFT's `LoraLayer.update_layer`: scale = alpha/r, or alpha/√r with `use_rslora`,
where r and alpha come from `rank_pattern` / `alpha_pattern` when a pattern key matches the module
name the way PEFT's `get_pattern_key` matches it (first key in order with
`re.match(rf"(.*\\.)?({key})$", module_name)`), else from `r` / `lora_alpha`.

Keys understood (the adapter name may appear before `.weight`, as in `lora_A.default.weight`):
  <module>.lora_A.weight (r, in) / (r, c_in, kh, kw)    <module>.lora_B.weight (out, r) / (out, r, 1, 1)
  <module>.lora_embedding_A (r, num_embeddings)          <module>.lora_embedding_B (dim, r)
  <module>.lora_magnitude_vector (DoRA)                  <module>.lora_B.bias (lora_bias)
  full weights saved beside the LoRA: `modules_to_save`, the head of a SEQ_CLS / TOKEN_CLS /
  QUESTION_ANS task, embedding layers (`_peft_config.py`; listed as modules_to_save, not audited)
Anything else is an error that lists the keys.  Not handled here: other PEFT methods (LoHa/LoKr
adapters in PEFT format are read by the LyCORIS module), and `fan_in_fan_out` needs no special
case because it only transposes how the base weight is stored, not ΔW's spectrum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterNotFoundError, FormatError, UnsupportedError
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from ._checks import check_outlier_shapes, factor_dims, reject_leftovers
from ._contract import FormatSpec, check_dest, read_options, stored_factors
from ._io import TensorSource, load_torch_bin, open_safetensors
from ._keys import PEFT_FIELDS, Rules, group_keys, load_factors, match_spelling
from ._patterns import pattern_value, rank_patterns  # noqa: F401  (pattern_value: public)
from ._peft_config import (  # noqa: F401  (load_config, Scaling, check_lora_fields: used by other formats)
    Scaling,
    check_lora_fields,
    full_weight_module,
    load_config,
    saved_module_names,
)

SPEC = FormatSpec(
    name="peft",
    read_options={"adapter_name": str},  # the sub-folder when a directory holds several adapters
    directory=True,
    file_name=None,
    kinds=("linear", "conv", "embedding"),
    flat_names=False,
    components=False,  # one model: module paths without a pipeline component
    passthrough=True,
)
CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."

# (role, regex on the full key); group "m" is the module path (the layer name once PREFIX is removed).
_KEY_RULES = Rules(
    (role, rf"^(?P<m>.+)\.{suffix}$")
    for role, suffix in (
        ("down", r"lora_A(?:\.[^.]+)?\.weight"),
        ("up", r"lora_B(?:\.[^.]+)?\.weight"),
        ("emb_down", r"lora_embedding_A(?:\.[^.]+)?"),
        ("emb_up", r"lora_embedding_B(?:\.[^.]+)?"),
        ("magnitude", r"lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?"),
        ("bias", r"lora_B(?:\.[^.]+)?\.bias"),
    )
)


@dataclass(frozen=True)
class PeftFiles:
    config: Path
    weights: Path


def sniff(path: str | Path) -> bool:
    p = Path(path)
    if p.is_file():
        return p.name in WEIGHTS and (p.parent / CONFIG).is_file()
    return p.is_dir() and ((p / CONFIG).is_file() or bool(_subfolder_adapters(p)))


def _subfolder_adapters(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and (d / CONFIG).is_file()) if p.is_dir() else []


def locate(path: str | Path, adapter_name: str | None = None) -> PeftFiles:
    """Find config + weights.  A directory holding one adapter sub-folder (PEFT saves non-default
    adapters as `<dir>/<adapter_name>/`) is followed; several need `adapter_name`."""
    p = Path(path)
    if not p.exists():
        raise AdapterNotFoundError("no such file or directory", path=p)
    if p.is_file():
        p = p.parent
    if adapter_name:
        p = p / adapter_name
        if not (p / CONFIG).is_file():
            raise AdapterNotFoundError(f"no adapter named {adapter_name!r} ({CONFIG} missing)", path=p)
    elif not (p / CONFIG).is_file():
        subs = _subfolder_adapters(p)
        if len(subs) == 1:
            p = subs[0]
        elif subs:
            names = ", ".join(s.name for s in subs)
            raise FormatError(  # every command takes a sub-folder as its path
                f"holds several adapters ({names}); give one of them as the path ({subs[0]}) "
                "or its name with --adapter NAME where the command has that option",
                path=p,
            )
        else:
            raise AdapterNotFoundError(f"{CONFIG} not found", path=p)
    for w in WEIGHTS:
        if (p / w).is_file():
            return PeftFiles(p / CONFIG, p / w)
    raise AdapterNotFoundError(f"no {WEIGHTS[0]} (or {WEIGHTS[1]}) beside {CONFIG}", path=p)


def _classify(
    keys: list[str], cfg: Mapping[str, Any], path: str
) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    """Group keys by layer: {layer: {role: key}}; the modules whose full weights are saved beside
    the LoRA (`_peft_config.full_weight_module`); leftovers (errors: not understood)."""
    by_layer, rest = group_keys(keys, _KEY_RULES, path, rename=lambda m: m.removeprefix(PREFIX))
    names = saved_module_names(cfg)
    saved, leftovers = [], []
    for key in rest:
        module = full_weight_module(key.removeprefix(PREFIX), names, by_layer)
        if module is not None:
            saved.append(module)
        else:
            leftovers.append(key)
    return by_layer, saved, leftovers


def read(path: str | Path, **options: Any) -> Adapter:
    files = locate(path, read_options(SPEC, options, path)["adapter_name"])
    cfg = load_config(files.config)
    if files.weights.suffix == ".bin":
        src: TensorSource = load_torch_bin(str(files.weights))
    else:
        src = open_safetensors(files.weights)
    by_layer, saved, leftovers = _classify(src.keys(), cfg, str(files.weights))
    layers = []
    scaling = Scaling(cfg, files.config)
    for module, roles in by_layer.items():
        info = _layer_info(files, scaling, src, module, roles, leftovers)
        if info is not None:
            layers.append(info)
    reject_leftovers(str(files.weights), leftovers, "PEFT LoRA tensors")
    if not layers:
        # an adapter with nothing to audit is an error, not "suggested r=1"
        raise FormatError("no LoRA layers found (no lora_A/lora_B tensors)", path=files.weights)
    check_outlier_shapes(str(files.weights), layers)
    notes = []
    if any(layer.dora for layer in layers):
        notes.append("DoRA adapter: the low-rank direction B·A is audited; magnitude vectors are not")
    if any("bias" in layer.extras for layer in layers):
        notes.append("lora_bias tensors present: the bias update is not part of the spectrum")
    saved_modules = sorted(set(saved))
    return Adapter(
        format="peft",
        layers=tuple(layers),
        loader=lambda info: _load(src, info),
        path=str(files.config.parent),
        config=frozen_mapping(cfg),
        metadata=frozen_mapping(src.metadata),
        modules_to_save=tuple(saved_modules),
        notes=tuple(notes),
    )


def _layer_info(
    files: PeftFiles, scaling: Scaling, src: TensorSource, module: str, roles: dict[str, str], leftovers
) -> LayerInfo | None:
    wpath = str(files.weights)
    if "down" in roles or "up" in roles:
        kind, dk, uk = "linear", roles.get("down"), roles.get("up")
    elif "emb_down" in roles or "emb_up" in roles:
        kind, dk, uk = "embedding", roles.get("emb_down"), roles.get("emb_up")
    else:  # a magnitude vector or bias without factors
        leftovers.extend(roles.values())
        return None
    if dk is None or uk is None:
        have = [k for k in (dk, uk) if k is not None]  # one: the branch above found a factor
        factor = "lora_embedding_" if kind == "embedding" else "lora_"
        missing = factor + ("A" if dk is None else "B")
        raise FormatError(
            f"layer {module}: {have[0]} has no matching {missing} tensor", path=wpath, keys=have
        )
    dshape, ushape = src.shape(dk), src.shape(uk)
    fkind, rank, out, inn = factor_dims(wpath, module, dshape, ushape, (dk, uk))
    kind = "conv" if fkind == "conv" else kind
    r_cfg, alpha, scale = scaling.layer(module)
    if r_cfg != rank:
        raise FormatError(
            f"layer {module}: tensors have rank {rank} but {CONFIG} gives r={r_cfg} for it "
            "(r / rank_pattern)",
            path=wpath,
            keys=[dk, uk],
        )
    extras: dict[str, Any] = {"alpha": alpha, "keys": (dk, uk)}
    if "bias" in roles:
        extras["bias"] = roles["bias"]
    if "magnitude" in roles:
        mag = src.shape(roles["magnitude"])
        if math.prod(mag) != out:
            raise FormatError(
                f"layer {module}: DoRA magnitude vector has {math.prod(mag)} entries, expected {out}",
                path=wpath,
                keys=[roles["magnitude"]],
            )
    weight_shape = (out, *dshape[1:]) if kind == "conv" else ((inn, out) if kind == "embedding" else ())
    return LayerInfo(
        name=module,
        kind=kind,
        rank=rank,
        out_features=out,
        in_features=inn,
        scale=scale,
        dtype=src.dtype(dk),
        weight_shape=weight_shape,
        dora="magnitude" in roles,
        extras=frozen_mapping(extras),
    )


def _load(src: TensorSource, info: LayerInfo) -> LoraDelta:
    dk, uk = info.extras["keys"]
    return load_factors(src, info, dk, uk)  # (r, in), (out, r)


# --- writing ------------------------------------------------------------------------------------


def _tensor_keys(info: LayerInfo) -> tuple[str, str]:
    """The keys the layer was read with when they spell it in PEFT form (keeps `lora_A.default`
    or a missing prefix as the source had it), else `base_model.model.<name>.lora_A.weight` …."""
    roles = ("emb_down", "emb_up") if info.kind == "embedding" else ("down", "up")
    keys = tuple(info.extras.get("keys", ()))
    rules = dict(_KEY_RULES)
    if len(keys) == 2 and all(
        (m := rules[role].match(k)) and m["m"].removeprefix(PREFIX) == info.name
        for role, k in zip(roles, keys, strict=True)
    ):
        return keys
    if info.kind == "embedding":
        return f"{PREFIX}{info.name}.lora_embedding_A", f"{PREFIX}{info.name}.lora_embedding_B"
    return f"{PREFIX}{info.name}.lora_A.weight", f"{PREFIX}{info.name}.lora_B.weight"


def passthrough_tensors(adapter: Adapter, *, stored: bool = False) -> dict[str, tuple[Any, str]]:
    """Tensors of a PEFT adapter on disk that are not LoRA factors (DoRA magnitudes, lora_bias, and
    the full weights of the modules `adapter.modules_to_save` still lists: none after
    `formats.load(..., lora_only=True)`): {key: (array, dtype)}, copied unchanged into a rewritten
    adapter.  `stored`: a .safetensors file's tensors as their stored bytes (`StoredFactor`, nothing
    decoded), for the writer to copy."""
    if adapter.format != "peft" or not adapter.path:
        return {}
    files = locate(adapter.path)
    src: TensorSource = (
        load_torch_bin(str(files.weights))
        if files.weights.suffix == ".bin"
        else open_safetensors(files.weights)
    )
    used = {k for layer in adapter.layers for k in layer.extras.get("keys", ())}
    names, layers, kept = (
        saved_module_names(load_config(files.config)),
        set(adapter.names),
        set(adapter.modules_to_save),
    )

    def copied(key: str) -> bool:
        module = full_weight_module(key.removeprefix(PREFIX), names, layers)
        return key not in used and (module is None or module in kept)

    read = (lambda k: src.stored(k) or src.get(k)) if stored else src.get
    return {k: (read(k), src.dtype(k)) for k in src.keys() if copied(k)}


def model_path(info: LayerInfo) -> str | None:
    return info.name  # a module path of one model, without base_model.model.


def match_key(info: LayerInfo) -> str:
    return match_spelling(info.name, info.name)


def write(adapter: Adapter, dest: str | Path, *, source: Adapter | None = None) -> Path:
    """Write `adapter` as a PEFT directory (adapter_config.json + adapter_model.safetensors).

    The directory is built under a temporary name beside `dest` and renamed into place, so `dest`
    appears complete or not at all; an existing non-empty `dest` is refused.  From a PEFT `source`
    (default: the adapter itself) come the config (base model, target_modules, task_type,
    use_rslora, ...) and, when it is on disk, the tensors that are not LoRA factors (DoRA
    magnitudes, lora_bias, modules_to_save weights), copied unchanged.  From any other source: a
    fresh config with target_modules = the layer names and its base_model_name_or_path.
    r / lora_alpha / rank_pattern / alpha_pattern are computed after the last layer so that each
    layer keeps the rank and scale of the delta written for it."""
    from ..files import atomic_dir, write_text

    source = adapter if source is None else source
    dest = check_dest(dest)
    with atomic_dir(dest) as tmp:
        rows = _write_tensors(adapter, source, tmp / WEIGHTS[0])
        cfg = _config_for(source, rows)
        text = json.dumps(dict(sorted(cfg.items())), indent=2)  # pattern keys keep their order
        write_text(tmp / CONFIG, text + "\n")
    return dest


def _write_tensors(adapter: Adapter, source: Adapter, weights: Path) -> list[tuple[str, int, float]]:
    """Stream the pass-through tensors and every layer's factors; (name, rank, scale) per layer."""
    from ._write import SafetensorsWriter, header_room

    carried = passthrough_tensors(source, stored=True)
    rows = []
    with SafetensorsWriter(weights, reserve=header_room([*adapter.names, *carried])) as out:
        for key, (arr, dt) in carried.items():
            out.add(key, arr, dt)
        for delta in adapter.iter_deltas():  # one layer's factors alive at a time
            info = delta.info
            # down (r, in | c_in, kh, kw), up (out, r[, 1, 1]); a StoredDelta's as StoredFactors
            down, up = stored_factors(delta, SPEC, adapter.path, keep_stored=True)
            if info.dora and not carried:
                raise UnsupportedError(
                    f"layer {info.name}: DoRA magnitude vectors are copied from a PEFT source on disk; "
                    "this one has none",
                    path=adapter.path,
                )
            dk, uk = _tensor_keys(info)
            out.add(dk, *down)
            out.add(uk, *up)
            rows.append((info.name, info.rank, info.scale))
        out.close({"format": "pt"})
    return rows


def _config_for(source: Adapter, rows: list[tuple[str, int, float]]) -> dict[str, Any]:
    if source.format == "peft":
        cfg = dict(source.config)
    else:  # the layers written, and what the source knows of the PEFT config (`_keys.PEFT_FIELDS`)
        cfg = {"target_modules": sorted(name for name, _, _ in rows), "use_rslora": False}
        cfg.update({k: source.config[k] for k in PEFT_FIELDS if k in source.config})
        if not cfg.get("base_model_name_or_path"):
            cfg.pop("base_model_name_or_path", None)
    cfg.setdefault("peft_type", "LORA")
    cfg.setdefault("target_modules", sorted(name for name, _, _ in rows))  # a source that names none
    cfg.update(rank_patterns(rows, bool(cfg.get("use_rslora", False))))
    return cfg
