"""diffusers LoRA files (`save_lora_weights`): one .safetensors file (default name
`pytorch_lora_weights.safetensors`) whose keys start with the pipeline component.

Keys understood, per `<c>.<module>` with c in COMPONENTS (all naming generations diffusers writes):
  current      <c>.<module>.lora_A.weight (r, in | r, c_in, kh, kw) / .lora_B.weight (out, r[, 1, 1])
  older        <c>.<module>.lora.down.weight / .lora.up.weight
  attn procs   <c>.<…>.processor.to_q_lora.down.weight / .up.weight   (module …to_q; to_out_lora → to_out.0)
  text encoder <c>.<module>.lora_linear_layer.down.weight / .up.weight
  optional     <c>.<module>.alpha (network_alphas), .lora_magnitude_vector (DoRA), .lora_B.bias
Scale, per layer: the module's `.alpha` key (alpha / r) if present, else the safetensors metadata
`lora_adapter_metadata` (JSON of the PEFT LoraConfig with keys "<c>.r", "<c>.lora_alpha",
"<c>.rank_pattern", ...; PEFT rules incl. rsLoRA), else 1 (diffusers then loads lora_alpha = r).
Layer names keep the component prefix ("unet.down_blocks.0…to_q") so components never collide.

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
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from ._checks import check_outlier_shapes, factor_dims, reject_leftovers
from ._contract import FormatSpec, read_options, stored_factors
from ._io import SafetensorsWriter, TensorSource, header_room, open_safetensors
from ._keys import (
    COMPONENTS,
    carried_metadata,
    group_keys,
    header_keys,
    match_spelling,
    missing_pair,
    read_alpha,
)
from ._patterns import rank_patterns
from .peft import Scaling

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
_M = rf"(?P<m>(?:{'|'.join(COMPONENTS)})\..+?)"
# (role, rule) in order; the first match wins.  Roles: down, up, alpha, magnitude, bias.
RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (role, re.compile(rf"^{_M}{suffix}$"))
    for role, suffix in (
        ("down", r"\.lora_A(?:\.[^.]+)?\.weight"),
        ("up", r"\.lora_B(?:\.[^.]+)?\.weight"),
        ("bias", r"\.lora_B(?:\.[^.]+)?\.bias"),
        ("down", r"(?:\.lora|\.lora_linear_layer|_lora)\.down\.weight"),
        ("up", r"(?:\.lora|\.lora_linear_layer|_lora)\.up\.weight"),
        ("alpha", r"\.alpha"),
        ("magnitude", r"\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?"),
    )
)


def _module_name(raw: str) -> str:
    """Old attention-processor paths → model module paths (as diffusers' own converter does)."""
    name = raw.replace(".processor.", ".")
    return re.sub(r"\.to_out$", ".to_out.0", name) if raw != name else name


def _weights(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise AdapterNotFoundError(f"no diffusers LoRA file ({WEIGHTS})", path=p)
    return p


def sniff(path: str | Path) -> bool:
    p = Path(path)
    if p.is_dir():
        if (p / "adapter_config.json").exists() or not (p / WEIGHTS).is_file():
            return False
        p = p / WEIGHTS
    keys = header_keys(p)
    if not keys or not all(k.split(".", 1)[0] in COMPONENTS for k in keys):
        return False
    return any(rule.match(k) for role, rule in RULES if role in ("down", "up") for k in keys)


def read(path: str | Path, **options: Any) -> Adapter:
    read_options(SPEC, options, path)
    weights = _weights(path)
    src = open_safetensors(weights)
    configs = _component_configs(src.metadata, weights)
    by_module, leftovers = group_keys(src.keys(), RULES, src.path, rename=_module_name)
    scalings = {c: Scaling(cfg, weights) for c, cfg in configs.items()}  # patterns indexed once
    layers = [_layer(src, name, roles, scalings) for name, roles in by_module.items()]
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
            {f"{c}.{k}": v for c, cfg in configs.items() for k, v in cfg.items() if k in ("r", "lora_alpha")}
        ),
        metadata=frozen_mapping({k: v for k, v in src.metadata.items() if k != METADATA_KEY}),
        notes=tuple(notes),
    )


def _component_configs(metadata, path: Path) -> dict[str, dict[str, Any]]:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FormatError(f"metadata {METADATA_KEY} is not valid JSON ({e.msg})", path=path) from None
    if not isinstance(flat, dict):
        raise FormatError(f"metadata {METADATA_KEY} must be a JSON object", path=path)
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        out.setdefault(component, {})[field] = value
    return out


def _layer(src: TensorSource, name: str, roles: dict[str, str], scalings: dict[str, Scaling]) -> LayerInfo:
    missing_pair(src, name, roles, ("down", "up"), {"down": "lora_A/down", "up": "lora_B/up"})
    dk, uk = roles["down"], roles["up"]
    dshape = src.shape(dk)
    kind, rank, out, inn = factor_dims(src.path, name, dshape, src.shape(uk), (dk, uk))
    component, _, module = name.partition(".")
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
    return LoraDelta(
        info, src.get(dk).reshape(info.rank, -1), src.get(uk).reshape(info.out_features, info.rank)
    )


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
            down, up = stored_factors(delta, SPEC, adapter.path)  # (r, in | c_in, kh, kw), (out, r[, 1, 1])
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
