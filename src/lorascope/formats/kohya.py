"""kohya / sd-scripts LoRA and LoCon: one .safetensors file with flattened module names.

Keys (sd-scripts `networks/lora.py`, LyCORIS `locon`):
  lora_unet_<path>.lora_down.weight   (r, in) | (r, c_in, kh, kw) | (r, c_in, 1, 1) with lora_mid
  lora_unet_<path>.lora_up.weight     (out, r) | (out, r, 1, 1)
  lora_unet_<path>.lora_mid.weight    LoCon Tucker core (r, r, kh, kw): folded exactly into down
  lora_unet_<path>.alpha              scalar; scale = alpha / r (no alpha key: alpha = r, scale 1)
  lora_unet_<path>.dora_scale         DoRA magnitude (the low-rank direction is audited)
Prefixes: lora_unet_, lora_te_, lora_te1_, lora_te2_, lora_te3_ (any `lora_<word>_`).  `<path>` is
the model's module path with "." replaced by "_"; that flattening is lossy, so layer names stay in
kohya form.  Files written by `lorascope convert` carry the dotted names in the metadata key
`lorascope_module_names` (JSON {kohya name: dotted name}), which makes kohya → PEFT/diffusers exact.

The `ss_*` training metadata sd-scripts writes (ss_network_dim, ss_network_alpha,
ss_sd_model_name, ss_base_model_version, ...) is kept in `Adapter.metadata`; the audit shows it.
Files with LyCORIS LoHa/LoKr keys (hada_*, lokr_*) belong to the `lycoris` format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..types import Adapter, LayerInfo, frozen_mapping
from ._checks import check_outlier_shapes, reject_leftovers
from ._io import SafetensorsWriter, open_safetensors
from ._keys import (
    KOHYA_MODULE,
    KOHYA_ROLES,
    compile_rules,
    group_keys,
    header_keys,
    kohya_lora_layer,
    load_kohya_lora,
    stored,
)

NAMES_KEY = "lorascope_module_names"
RULES = compile_rules(KOHYA_MODULE, KOHYA_ROLES)
_LYCORIS_ONLY = re.compile(r"\.(hada_|lokr_)")

# Component prefixes for writing: the first dotted component of a layer name → kohya prefix.
# PEFT adapters of a single model have no component; they are written under `default_prefix`.
WRITE_PREFIXES = {
    "unet": "lora_unet",
    "transformer": "lora_unet",
    "text_encoder": "lora_te1",
    "text_encoder_2": "lora_te2",
}


def sniff(path: str | Path) -> bool:
    keys = header_keys(path)
    if not keys or any(_LYCORIS_ONLY.search(k) for k in keys):
        return False
    return any(rule.match(k) for role, rule in RULES if role in ("down", "up") for k in keys)


def read(path: str | Path) -> Adapter:
    src = open_safetensors(path)
    by_module, leftovers = group_keys(src.keys(), RULES, src.path)
    names = _name_map(src.metadata, str(path))
    layers = []
    for module, roles in by_module.items():
        extras = {"dotted_name": names[module]} if module in names else {}
        layers.append(kohya_lora_layer(src, module, roles, extras))
    reject_leftovers(src.path, leftovers, "kohya LoRA tensors (lora_down/lora_up/alpha)")
    check_outlier_shapes(src.path, layers)
    return Adapter(
        format="kohya",
        layers=tuple(layers),
        loader=lambda info: load_kohya_lora(src, info),
        path=str(path),
        config=frozen_mapping(_config(src.metadata)),
        metadata=frozen_mapping(src.metadata),
        notes=_notes(layers),
    )


def _name_map(metadata, path: str) -> dict[str, str]:
    raw = metadata.get(NAMES_KEY)
    if not raw:
        return {}
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        raise FormatError(f"metadata {NAMES_KEY} is not valid JSON", path=path) from None
    if not isinstance(names, dict):
        raise FormatError(f"metadata {NAMES_KEY} must be a JSON object", path=path)
    return {str(k): str(v) for k, v in names.items()}


def _config(metadata) -> dict[str, Any]:
    """The sd-scripts training facts worth showing next to the spectra."""
    cfg: dict[str, Any] = {}
    for key, out in (("ss_network_dim", "r"), ("ss_network_alpha", "lora_alpha")):
        try:
            cfg[out] = float(metadata[key]) if "." in metadata[key] else int(metadata[key])
        except (KeyError, ValueError):
            pass
    for key in ("ss_sd_model_name", "ss_base_model_version"):
        if metadata.get(key):
            cfg["base_model_name_or_path"] = metadata[key]
            break
    return cfg


def _notes(layers: list[LayerInfo]) -> tuple[str, ...]:
    notes = []
    if any(layer.dora for layer in layers):
        notes.append("DoRA adapter: the low-rank direction up·down is audited; dora_scale vectors are not")
    if any("mid" in layer.extras["roles"] for layer in layers):
        notes.append("LoCon Tucker layers: lora_mid is folded exactly into lora_down before the spectrum")
    return tuple(notes)


def kohya_name(name: str, default_prefix: str = "lora_unet", two_text_encoders: bool = False) -> str:
    """Dotted module path → kohya name: 'text_encoder.a.b' → 'lora_te_a_b' ('lora_te1_a_b' beside a
    text_encoder_2), 'unet.a.b' and 'a.b' (no component) → 'lora_unet_a_b'."""
    head, _, rest = name.partition(".")
    if head in WRITE_PREFIXES and rest:
        prefix = "lora_te" if head == "text_encoder" and not two_text_encoders else WRITE_PREFIXES[head]
        return f"{prefix}_{rest.replace('.', '_')}"
    return f"{default_prefix}_{name.replace('.', '_')}"


def write(adapter: Adapter, dest: str | Path, *, default_prefix: str = "lora_unet", metadata=None) -> None:
    """Write a LoRA adapter as a kohya file, ΔW preserved exactly.

    up/down are stored as they are and alpha = scale·r, so alpha / r reproduces the scale.  Conv
    factors get their 4-D kohya shapes back from `weight_shape`.
    """
    names: dict[str, str] = {}
    two_te = any(x.extras.get("dotted_name", x.name).startswith("text_encoder_2.") for x in adapter.layers)
    with SafetensorsWriter(dest) as out:
        for delta in adapter.iter_deltas():  # one layer's factors alive at a time
            info = delta.info
            if info.kind == "embedding" or delta.down.shape[0] != info.rank:
                raise UnsupportedError(
                    f"layer {info.name}: only LoRA linear/conv layers convert to kohya", path=adapter.path
                )
            dotted = info.extras.get("dotted_name", info.name)
            k = info.name if adapter.format == "kohya" else kohya_name(dotted, default_prefix, two_te)
            if k in names:
                raise FormatError(
                    f"layers {names[k]} and {dotted} map to the same kohya name {k}", path=adapter.path
                )
            names[k] = dotted
            down, up = delta.down, delta.up  # (r, in), (out, r)
            if info.kind == "conv":
                down = down.reshape(info.rank, *info.weight_shape[1:])  # (r, c_in, kh, kw)
                up = up.reshape(*up.shape, 1, 1)  # (out, r, 1, 1)
            out.add(f"{k}.lora_down.weight", *stored(down, info.dtype))
            out.add(f"{k}.lora_up.weight", *stored(up, info.dtype))
            out.add(f"{k}.alpha", np.asarray(info.scale * info.rank, dtype=np.float64), "fp64")  # ()
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta[NAMES_KEY] = json.dumps(names)
        out.close(meta)
