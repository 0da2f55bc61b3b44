"""kohya / sd-scripts LoRA and LoCon: one .safetensors file with flattened module names.

Keys (sd-scripts `networks/lora.py`, LyCORIS `locon`):
  lora_unet_<path>.lora_down.weight   (r, in) | (r, c_in, kh, kw) | (r, c_in, 1, 1) with lora_mid
  lora_unet_<path>.lora_up.weight     (out, r) | (out, r, 1, 1)
  lora_unet_<path>.lora_mid.weight    LoCon Tucker core (r, r, kh, kw): folded exactly into down
  lora_unet_<path>.alpha              scalar; scale = alpha / r (no alpha key: alpha = r, scale 1)
  lora_unet_<path>.dora_scale         DoRA magnitude (the low-rank direction is audited)
Prefixes: lora_unet_, lora_te_, lora_te1_, lora_te2_, lora_te3_ (any `lora_<word>_`).  `<path>` is
the model's module path with "." replaced by "_"; that flattening is lossy, so layer names stay in
kohya form.  Files lorascope writes carry the dotted names in the metadata key
`lorascope_module_names` (JSON {kohya name: dotted name}), which makes kohya → PEFT/diffusers exact.

The `ss_*` training metadata sd-scripts writes (ss_network_dim, ss_network_alpha,
ss_sd_model_name, ss_base_model_version, ...) is kept in `Adapter.metadata`; the audit shows it.
Files with LyCORIS LoHa/LoKr keys (hada_*, lokr_*) belong to the `lycoris` format.

Writing (`write`): plain LoRA / LoCon layers, alpha = scale·r as a float64 scalar.  Dotted names
become sd-scripts names (`unet.`/`transformer.`/no component → `lora_unet_`, `text_encoder.` →
`lora_te_`, or `lora_te1_` when a `text_encoder_2.` layer is present → `lora_te2_`); kohya names are
kept; LyCORIS wrapper names `lycoris_<path>` become `lora_unet_<path>`.  Metadata: a kohya source's
metadata (not its `sshs_*` tensor hashes), or any source's `ss_*` keys, then
`_keys.training_metadata`: ss_network_dim / ss_network_alpha recomputed from the layers written
("Dynamic" when they differ, as sd-scripts' resize_lora.py writes), ss_sd_model_name from the
source's base model, `lorascope_peft_config` (the source's whole-adapter PEFT fields, read back
into the config and written into a PEFT conversion); ss_network_module networks.lora by default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..types import Adapter, LayerInfo, frozen_mapping
from ._checks import check_outlier_shapes, reject_leftovers
from ._contract import FormatSpec, read_options
from ._io import open_safetensors
from ._keys import (
    KOHYA_MODULE,
    KOHYA_ROLES,
    carried_metadata,
    compile_rules,
    group_keys,
    header_keys,
    kohya_lora_layer,
    kohya_name,
    load_kohya_lora,
    match_spelling,
    read_name_map,
    read_peft_fields,
    training_metadata,
    write_lora_keys,
)

SPEC = FormatSpec(
    name="kohya",
    read_options={},
    directory=False,
    file_name=None,  # a kohya file has no conventional name: the destination must end in .safetensors
    kinds=("linear", "conv"),
    flat_names=True,
    components=True,  # lora_unet_ / lora_te1_ / lora_te2_ prefixes
    passthrough=False,
)
RULES = compile_rules(KOHYA_MODULE, KOHYA_ROLES)
_KOHYA_NAME = re.compile(rf"^{KOHYA_MODULE}$")
_LYCORIS_ONLY = re.compile(r"\.(hada_|lokr_)")


def sniff(path: str | Path) -> bool:
    keys = header_keys(path)
    if not keys or any(_LYCORIS_ONLY.search(k) for k in keys):
        return False
    return any(rule.match(k) for role, rule in RULES if role in ("down", "up") for k in keys)


def read(path: str | Path, **options: Any) -> Adapter:
    read_options(SPEC, options, path)
    src = open_safetensors(path)
    by_module, leftovers = group_keys(src.keys(), RULES, src.path)
    names = read_name_map(src.metadata, str(path))
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
        config=frozen_mapping(_config(src.metadata, src.path)),
        metadata=frozen_mapping(src.metadata),
        notes=_notes(layers),
    )


def model_path(info: LayerInfo) -> str | None:
    """The dotted path lorascope recorded for this layer; None for other kohya files (not invertible)."""
    return info.extras.get("dotted_name")


def match_key(info: LayerInfo) -> str:
    return match_spelling(model_path(info), info.name)


def _config(metadata, path: str) -> dict[str, Any]:
    """The sd-scripts training facts worth showing next to the spectra, and the PEFT config fields
    a lorascope-written file carries (`_keys.PEFT_KEY`)."""
    cfg: dict[str, Any] = read_peft_fields(metadata, path)
    for key, out in (("ss_network_dim", "r"), ("ss_network_alpha", "lora_alpha")):
        try:
            cfg[out] = float(metadata[key]) if "." in metadata[key] else int(metadata[key])
        except (KeyError, ValueError):
            pass
    for key in ("ss_sd_model_name", "ss_base_model_version"):
        if metadata.get(key) and not cfg.get("base_model_name_or_path"):
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


def write(adapter: Adapter, dest: str | Path, *, source: Adapter | None = None) -> Path:
    """Write the adapter's plain LoRA / LoCon layers as one kohya file, ΔW preserved exactly.

    Names: kohya names are kept, dotted paths become sd-scripts names (module docstring).  Which
    prefix the first text encoder gets depends on whether a text_encoder_2 layer exists, so that
    one fact is taken from `adapter.names` (names are fixed before any layer is computed)."""
    two_te = any(n.startswith("text_encoder_2.") for n in adapter.names)

    def spell(info: LayerInfo) -> str:
        if _KOHYA_NAME.match(info.name):
            return info.name
        if info.name.startswith("lycoris_"):  # LyCORIS's wrapper prefix: one model, kohya's lora_unet_
            return "lora_unet_" + info.name[len("lycoris_") :]
        return kohya_name(info.name, two_te)

    def metadata(rows: list[tuple[int, float]]) -> dict[str, str]:
        src = source if source is not None else adapter
        meta = {**carried_metadata(src, "kohya", ("ss_",)), **training_metadata(src, rows)}
        meta.setdefault("ss_network_module", "networks.lora")
        return meta

    return write_lora_keys(adapter, dest, SPEC, spell, metadata)
