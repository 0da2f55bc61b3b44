"""diffusers LoRA files: one .safetensors file (default name `pytorch_lora_weights.safetensors`).

Two layouts.  A pipeline file (`save_lora_weights`) starts every key with the pipeline component
c in COMPONENTS; one model's file (`ModelMixin.save_lora_adapter`, and the older UNet
`save_attn_procs`) has no component.  Detection claims a file without components only when its
keys are all diffusers LoRA keys and it carries `lora_adapter_metadata` or the older spellings
(a bare PEFT `adapter_model.safetensors` has neither).

Keys understood, per `<c>.<module>` (or `<module>`), all naming generations diffusers writes:
  current      <module>.lora_A.weight (r, in | r, c_in, kh, kw) / .lora_B.weight (out, r[, 1, 1])
  older        <module>.lora.down.weight / .lora.up.weight
  attn procs   <…>.processor.to_q_lora.down.weight / .up.weight   (module …to_q; to_out_lora →
               to_out.0; in a text encoder to_q_lora … to_out_lora → q_proj … out_proj)
  text encoder <module>.lora_linear_layer.down.weight / .up.weight
  optional     <module>.alpha (network_alphas), .lora_magnitude_vector (DoRA), .lora_B.bias
Scale, per layer: the module's `.alpha` key (alpha / r) if present, else the safetensors metadata
`lora_adapter_metadata` (JSON of the PEFT LoraConfig, its keys prefixed "<c>." in a pipeline file;
PEFT rules incl. rsLoRA, validated as a PEFT config is), else 1 (diffusers then loads
lora_alpha = r).  Layer names keep the component prefix ("unet.down_blocks.0…to_q") so components
never collide; one model's layers are named by their module paths.

Writing (`write`): current naming (`<c>.<module>.lora_A.weight` / `.lora_B.weight`) for plain
LoRA / LoCon layers; a name without a component gets `unet.`.  `lora_adapter_metadata` holds, per
component, r / lora_alpha (the most common pair), rank_pattern / alpha_pattern for the other layers
(alpha = scale·r), use_rslora false and target_modules, written after the last layer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import AdapterNotFoundError, FormatError
from ..files import json_loads
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from ._checks import check_outlier_shapes, factor_dims, reject_leftovers
from ._contract import FormatSpec, read_options, stored_factors
from ._header import short_repr
from ._io import TensorSource, open_safetensors
from ._keys import (
    COMPONENTS,
    Rules,
    carried_metadata,
    group_keys,
    load_factors,
    match_spelling,
    missing_pair,
    read_alpha,
    safetensors_header,
)
from ._patterns import rank_patterns
from ._peft_config import Scaling, check_lora_fields
from ._write import SafetensorsWriter, header_room

WEIGHTS = "pytorch_lora_weights.safetensors"
SPEC = FormatSpec(
    name="diffusers",
    read_options={},
    directory=False,
    file_name=WEIGHTS,
    kinds=("linear", "conv"),
    flat_names=False,
    components=True,
    passthrough=False,
)
METADATA_KEY = "lora_adapter_metadata"
DEFAULT_COMPONENT = "unet"  # what `write` prefixes a name without a component with
_SUFFIXES = (  # (role, key suffix after the module) in order; the first match wins
    ("down", r"\.lora_A(?:\.[^.]+)?\.weight"),
    ("up", r"\.lora_B(?:\.[^.]+)?\.weight"),
    ("bias", r"\.lora_B(?:\.[^.]+)?\.bias"),
    ("down", r"(?:\.lora|\.lora_linear_layer)\.down\.weight"),
    ("up", r"(?:\.lora|\.lora_linear_layer)\.up\.weight"),
    ("alpha", r"\.alpha"),
    ("magnitude", r"\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?"),
)
# Attention-processor keys ("…processor.to_q_lora.down.weight"): the module is captured with its
# "_lora" so that `_module_name` knows to map it (to_q_lora → to_q, to_out_lora → to_out.0).
_PROC_SUFFIXES = (("down", r"\.down\.weight"), ("up", r"\.up\.weight"))


def _rules(module: str, proc_module: str) -> Rules:
    return Rules(
        [(role, rf"^{module}{suffix}$") for role, suffix in _SUFFIXES]
        + [(role, rf"^{proc_module}{suffix}$") for role, suffix in _PROC_SUFFIXES]
    )


_C = "|".join(COMPONENTS)
# Pipeline files (`save_lora_weights`): "<component>.<module>…".
RULES = _rules(rf"(?P<m>(?:{_C})\..+?)", rf"(?P<m>(?:{_C})\..+?_lora)")
# One model's files (`save_lora_adapter`, the older `save_attn_procs`): "<module>…", no component.
MODEL_RULES = _rules(r"(?P<m>[^.].*?)", r"(?P<m>[^.].*?_lora)")
_OLD_SPELLING = re.compile(r"(?:_lora|\.lora|\.lora_linear_layer)\.(?:down|up)\.weight$")
_TEXT_ATTN = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


def _module_name(raw: str) -> str:
    """Attention-processor paths → model module paths, as diffusers' own converters map them:
    "….processor.to_q_lora" → "….to_q", "to_out_lora" → "to_out.0" in a UNet / transformer, and
    in a text encoder (whose attention modules are q_proj … out_proj) "to_q_lora" → "q_proj"."""
    if not raw.endswith("_lora"):
        return raw
    head, _, leaf = raw[: -len("_lora")].replace(".processor.", ".").rpartition(".")
    if raw.split(".", 1)[0].startswith("text_encoder"):
        leaf = _TEXT_ATTN.get(leaf, leaf)
    elif leaf == "to_out":
        leaf = "to_out.0"
    return f"{head}.{leaf}" if head else leaf


def _weights(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise AdapterNotFoundError(f"no diffusers LoRA file ({WEIGHTS})", path=p)
    return p


def _pipeline(keys: list[str]) -> bool:
    """Every key starts with a pipeline component: a `save_lora_weights` file."""
    return all(k.split(".", 1)[0] in COMPONENTS for k in keys)


def sniff(path: str | Path) -> bool:
    """A pipeline file (every key behind a component) with LoRA keys; or one model's file whose keys
    are all diffusers LoRA keys and which either spells them the older way (`to_q_lora.down`,
    `lora_linear_layer.down`, `lora.down`) or carries `lora_adapter_metadata` (PEFT naming)."""
    p = Path(path)
    if p.is_dir():
        if (p / "adapter_config.json").exists() or not (p / WEIGHTS).is_file():
            return False
        p = p / WEIGHTS
    header = safetensors_header(p)
    if header is None:
        return False
    keys, metadata = header
    factor_rules = [
        (role, rule) for role, rule in (RULES if _pipeline(keys) else MODEL_RULES) if role in ("down", "up")
    ]
    if not any(rule.match(k) for _, rule in factor_rules for k in keys):
        return False
    if _pipeline(keys):
        return True
    understood = all(any(rule.match(k) for _, rule in MODEL_RULES) for k in keys)
    own = METADATA_KEY in metadata or any(_OLD_SPELLING.search(k) for k in keys)
    return understood and own and not any(k.startswith("base_model.model.") for k in keys)


def read(path: str | Path, **options: Any) -> Adapter:
    read_options(SPEC, options, path)
    weights = _weights(path)
    src = open_safetensors(weights)
    keys = src.keys()
    pipeline = _pipeline(keys)
    configs = _component_configs(src.metadata, weights, pipeline)
    rules = RULES if pipeline else MODEL_RULES
    by_module, leftovers = group_keys(keys, rules, src.path, rename=_module_name)
    scalings = {c: Scaling(cfg, weights) for c, cfg in configs.items()}  # patterns indexed once
    layers = [_layer(src, name, roles, scalings, pipeline) for name, roles in by_module.items()]
    reject_leftovers(src.path, leftovers, "diffusers LoRA tensors")
    check_outlier_shapes(src.path, layers)
    notes = (
        ["DoRA: the low-rank direction is audited; magnitude vectors are not"]
        if any(x.dora for x in layers)
        else []
    )
    return Adapter(
        format="diffusers",
        layers=tuple(layers),
        loader=lambda info: _load(src, info),
        path=str(weights),
        config=frozen_mapping(
            {
                f"{c}.{k}" if c else k: v
                for c, cfg in configs.items()
                for k, v in cfg.items()
                if k in ("r", "lora_alpha")
            }
        ),
        metadata=frozen_mapping({k: v for k, v in src.metadata.items() if k != METADATA_KEY}),
        notes=tuple(notes),
    )


def _component_configs(metadata, path: Path, pipeline: bool) -> dict[str, dict[str, Any]]:
    """`lora_adapter_metadata` as {component: PEFT LoraConfig fields}, each validated as PEFT's
    config is.  A pipeline file prefixes every field with its component ("unet.r"); one model's
    file holds the config itself (component "")."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    flat = json_loads(raw, path, f"metadata {METADATA_KEY} is not valid JSON ({{}})")
    if not isinstance(flat, dict):
        raise FormatError(f"metadata {METADATA_KEY} must be a JSON object", path=path)
    out: dict[str, dict[str, Any]] = {}
    if pipeline:
        for key, value in flat.items():
            component, _, field = key.partition(".")
            if component not in COMPONENTS or not field:
                raise FormatError(
                    f"metadata {METADATA_KEY}: key {short_repr(key)} does not start with a pipeline "
                    f"component ({', '.join(COMPONENTS)})",
                    path=path,
                )
            out.setdefault(component, {})[field] = value
    else:
        out[""] = flat
    for component, cfg in out.items():
        where = f"metadata {METADATA_KEY}{' ' + component if component else ''}: "
        check_lora_fields(cfg, path, where)
    return out


def _layer(
    src: TensorSource, name: str, roles: dict[str, str], scalings: dict[str, Scaling], pipeline: bool
) -> LayerInfo:
    missing_pair(src, name, roles, ("down", "up"), {"down": "lora_A/down", "up": "lora_B/up"})
    dk, uk = roles["down"], roles["up"]
    dshape = src.shape(dk)
    kind, rank, out, inn = factor_dims(src.path, name, dshape, src.shape(uk), (dk, uk))
    component, _, module = name.partition(".") if pipeline else ("", "", name)
    alpha: float | None = None
    if "alpha" in roles:
        alpha = read_alpha(src, roles["alpha"], name)
        scale = alpha / rank
    elif component in scalings:
        r_cfg, alpha, scale = scalings[component].layer(module, r_default=rank)
        if r_cfg != rank:
            raise FormatError(
                f"layer {name}: tensors have rank {rank} but {METADATA_KEY} gives r={r_cfg}",
                path=src.path,
                keys=[dk, uk],
            )
    else:
        scale = 1.0
    return LayerInfo(
        name=name,
        kind=kind,
        rank=rank,
        out_features=out,
        in_features=inn,
        scale=scale,
        dtype=src.dtype(dk),
        weight_shape=(out, *dshape[1:]) if kind == "conv" else (),
        dora="magnitude" in roles,
        extras=frozen_mapping({"alpha": alpha, "keys": (dk, uk), "roles": dict(roles)}),
    )


def _load(src: TensorSource, info: LayerInfo) -> LoraDelta:
    dk, uk = info.extras["keys"]
    return load_factors(src, info, dk, uk)  # (r, in), (out, r)


def model_path(info: LayerInfo) -> str | None:
    return info.name  # "<component>.<module path>"


def match_key(info: LayerInfo) -> str:
    return match_spelling(info.name, info.name)


def write(adapter: Adapter, dest: str | Path, *, source: Adapter | None = None) -> Path:
    """Write the adapter's plain LoRA / LoCon layers as one current-naming diffusers file."""
    per_comp: dict[str, list[tuple[str, int, float]]] = {}
    with SafetensorsWriter(dest, reserve=header_room(adapter.names)) as out:
        for delta in adapter.iter_deltas():  # one layer's factors alive at a time
            info = delta.info
            # down (r, in | c_in, kh, kw), up (out, r[, 1, 1]); a StoredDelta's as StoredFactors
            down, up = stored_factors(delta, SPEC, adapter.path, keep_stored=True)
            full = info.extras.get("dotted_name", info.name)
            if full.split(".", 1)[0] not in COMPONENTS:
                full = f"{DEFAULT_COMPONENT}.{full}"
            comp, _, module = full.partition(".")
            out.add(f"{full}.lora_A.weight", *down)
            out.add(f"{full}.lora_B.weight", *up)
            per_comp.setdefault(comp, []).append((module, info.rank, info.scale))
        meta = {}
        for comp, rows in per_comp.items():
            meta.update({f"{comp}.{k}": v for k, v in _patterns(rows).items()})
        text = json.dumps(dict(sorted(meta.items())))  # pattern keys keep their order (anchored first)
        carried = carried_metadata(source if source is not None else adapter, "diffusers")
        out.close({**carried, METADATA_KEY: text, "format": "pt"})
    return Path(dest)


def _patterns(rows: list[tuple[str, int, float]]) -> dict[str, Any]:
    """PEFT config fields giving each (module, rank, scale) its rank and scale (PEFT rules)."""
    targets = sorted(m for m, _, _ in rows)
    return {**rank_patterns(rows, rslora=False), "use_rslora": False, "target_modules": targets}
