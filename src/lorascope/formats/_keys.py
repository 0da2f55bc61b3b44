"""Key tables and helpers shared by the format readers.

Readers are total: `group_keys` sorts every key of a file into ``{layer: {role: key}}`` by a
per-format table of rules, refuses a key two roles claim, a role two keys claim and two spellings
of one layer, and returns what no rule matched so the reader can reject it by name.
`kohya_lora_layer` builds the plain-LoRA (LoCon) layer that kohya sd-scripts and LyCORIS write with
the same keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, LorascopeError
from ..files import json_loads
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from ._checks import ALPHA_RULE, factor_dims, finite_alpha
from ._contract import FormatSpec, stored_factors
from ._header import read_header, short_repr
from ._io import TensorSource
from ._stored import read_stored
from ._write import SafetensorsWriter, header_room

# Pipeline components: the first dotted part of a diffusers layer name ("unet.down_blocks.0…").
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")

# kohya / sd-scripts prefix of each component (SD1/2 name their one text encoder "lora_te").
KOHYA_PREFIXES = {
    "unet": "lora_unet",
    "transformer": "lora_unet",
    "text_encoder": "lora_te1",
    "text_encoder_2": "lora_te2",
    "text_encoder_3": "lora_te3",
}

# Metadata key of lorascope-written kohya / LyCORIS files: JSON {flattened name: dotted module path},
# which makes the flattening ("." → "_", not invertible) reversible.
NAMES_KEY = "lorascope_module_names"

# kohya / sd-scripts module names: the model path with dots flattened to "_", behind a component
# prefix: lora_unet_ (UNet / DiT), lora_te_ (SD1/2 text encoder), lora_te1_/lora_te2_/lora_te3_
# (SDXL, SD3).  Other "lora_<word>_" prefixes are accepted so new components still read.
KOHYA_MODULE = r"(?P<m>lora_[a-z0-9]+_[A-Za-z0-9_]+)"

# role -> key suffix after "<module>.", for plain LoRA/LoCon as sd-scripts and LyCORIS write it.
KOHYA_ROLES: dict[str, str] = {
    "down": "lora_down.weight",  # (r, in) or (r, c_in, kh, kw); (r, c_in, 1, 1) with lora_mid
    "up": "lora_up.weight",  # (out, r) or (out, r, 1, 1)
    "mid": "lora_mid.weight",  # LoCon Tucker core (r, r, kh, kw)
    "alpha": "alpha",  # scalar; scale = alpha / r, missing alpha means alpha = r
    "dora_scale": "dora_scale",  # DoRA magnitude, (out, 1, …) or (1, in, …)
}


class Rules(Sequence[tuple[str, "re.Pattern[str]"]]):
    """(role, rule on the whole key; group "m" = module) pairs, compiled on first use: every
    format's key patterns compiled at import would cost each command ≈ 25 ms of start-up."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._pairs = tuple(pairs)  # (role, regex source)
        self._compiled: tuple[tuple[str, re.Pattern[str]], ...] | None = None

    def _rules(self) -> tuple[tuple[str, re.Pattern[str]], ...]:
        if self._compiled is None:
            self._compiled = tuple((role, re.compile(src)) for role, src in self._pairs)
        return self._compiled

    def __getitem__(self, i):
        return self._rules()[i]

    def __len__(self) -> int:
        return len(self._pairs)


def compile_rules(module: str, roles: Mapping[str, str]) -> Rules:
    return Rules((role, rf"^{module}\.{re.escape(suffix)}$") for role, suffix in roles.items())


def group_keys(
    keys: Iterable[str], rules: Rules, path: str, rename: Callable[[str], str] | None = None
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{layer name: {role: key}} in file order, plus the keys no rule matched.

    `rename` maps the module a rule captured to the layer name (default: unchanged).  Readers are
    total, so three things are errors naming the keys: a key that rules of two roles claim, a role
    claimed by two keys of one layer, and two module spellings that give one layer name."""
    by_layer: dict[str, dict[str, str]] = {}
    spelled: dict[str, tuple[str, str]] = {}  # layer name -> (module as captured, its first key)
    leftovers: list[str] = []
    for key in keys:
        claims = list(dict.fromkeys((role, m["m"]) for role, rule in rules if (m := rule.match(key))))
        if not claims:
            leftovers.append(key)
            continue
        if len(claims) > 1:
            (r1, m1), (r2, m2) = claims[:2]
            raise FormatError(
                f"key {key} is claimed twice: as {r1} of layer {m1} and as {r2} of layer {m2}",
                path=path,
                keys=[key],
            )
        role, module = claims[0]
        name = rename(module) if rename else module
        first_module, first_key = spelled.setdefault(name, (module, key))
        if first_module != module:
            both = [first_key, key]
            raise FormatError(f"keys {first_key} and {key} both name layer {name}", path=path, keys=both)
        roles = by_layer.setdefault(name, {})
        if role in roles:
            both = [roles[role], key]
            raise FormatError(f"layer {name}: two {role} tensors, {both[0]} and {key}", path=path, keys=both)
        roles[role] = key
    return by_layer, leftovers


def header_keys(path: str | Path) -> list[str] | None:
    """Tensor names of a .safetensors file from its header, or None if it is not one (for sniffing)."""
    header = safetensors_header(path)
    return None if header is None else header[0]


def safetensors_header(path: str | Path) -> tuple[list[str], dict[str, str]] | None:
    """(tensor names, metadata) of a .safetensors file from its header, or None if it is not one."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return None
    try:
        header = read_header(str(p))
    except LorascopeError:
        return None
    return [k for k in header if k != "__metadata__"], dict(header.get("__metadata__") or {})


def header_error(path: str | Path) -> LorascopeError | None:
    """Why the .safetensors file at `path` cannot be parsed (None: its header is fine, or it is not
    a .safetensors file): what detection reports instead of "unknown format" for a corrupt file."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".safetensors"):
        return None
    try:
        read_header(str(p))
    except LorascopeError as e:
        return e
    return None


def read_alpha(src: TensorSource, key: str, name: str) -> float:
    """A per-module alpha: exactly one finite number within float32's range."""
    shape = src.shape(key)
    if math.prod(shape) != 1:
        raise FormatError(
            f"layer {name}: {key} must be a single number (alpha), got shape {list(shape)}",
            path=src.path,
            keys=[key],
        )
    value = float(np.asarray(src.get(key), dtype=np.float64).reshape(()))
    if not finite_alpha(value):
        raise FormatError(f"layer {name}: {key} must be {ALPHA_RULE}, got {value}", path=src.path, keys=[key])
    return value


def missing_pair(
    src: TensorSource,
    name: str,
    roles: Mapping[str, str],
    need: tuple[str, ...],
    shown: Mapping[str, str] = {},
) -> None:
    """Raise naming the present key(s) and the missing role(s) of a factor set (`shown`: display names)."""
    absent = [shown.get(r, r) for r in need if r not in roles]
    if absent:
        have = sorted(roles.values())
        raise FormatError(
            f"layer {name}: missing {', '.join(absent)} tensor(s) beside {', '.join(have)}",
            path=src.path,
            keys=have,
        )


def kohya_lora_layer(
    src: TensorSource, name: str, roles: Mapping[str, str], extras: Mapping[str, Any] | None = None
) -> LayerInfo:
    """LayerInfo for a kohya/LoCon module: lora_down, lora_up, optional lora_mid/alpha/dora_scale."""
    missing_pair(src, name, roles, ("down", "up"), KOHYA_ROLES)
    dk, uk = roles["down"], roles["up"]
    dshape, ushape = src.shape(dk), src.shape(uk)
    if "mid" in roles:
        dshape = _tucker_down_shape(src, name, roles["mid"], dshape)
    kind, rank, out, inn = factor_dims(src.path, name, dshape, ushape, (dk, uk))
    alpha = read_alpha(src, roles["alpha"], name) if "alpha" in roles else float(rank)
    alpha = alpha or float(rank)  # sd-scripts LoRAModule: alpha None or 0 means alpha = lora_dim
    if "dora_scale" in roles:
        n = math.prod(src.shape(roles["dora_scale"]))
        if n not in (out, dshape[1]):
            raise FormatError(
                f"layer {name}: dora_scale has {n} entries, expected {out} (out) or {dshape[1]} (in)",
                path=src.path,
                keys=[roles["dora_scale"]],
            )
    info_extras = {"alpha": alpha, "keys": (dk, uk), "roles": dict(roles), **(extras or {})}
    return LayerInfo(
        name=name,
        kind=kind,
        rank=rank,
        out_features=out,
        in_features=inn,
        scale=alpha / rank,
        dtype=src.dtype(dk),
        weight_shape=(out, *dshape[1:]) if kind == "conv" else (),
        dora="dora_scale" in roles,
        extras=frozen_mapping(info_extras),
    )


def _tucker_down_shape(src: TensorSource, name: str, mk: str, dshape) -> tuple[int, ...]:
    """With lora_mid (r, r, kh, kw) and lora_down (r, c_in, 1, 1) the effective down is (r, c_in, kh, kw)."""
    mshape = src.shape(mk)
    if len(mshape) != 4 or len(dshape) != 4 or mshape[1] != dshape[0] or any(k != 1 for k in dshape[2:]):
        raise FormatError(
            f"layer {name}: lora_mid {list(mshape)} does not fit lora_down {list(dshape)} "
            "(expected (r, r, kh, kw) and (r, c_in, 1, 1))",
            path=src.path,
            keys=[mk],
        )
    return (mshape[0], dshape[1], *mshape[2:])


def tucker_down(mid: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Fold a Tucker core into the down factor: D[i, c, h, w] = Σ_j mid[i, j, h, w]·down[j, c].

    mid: (r, r, kh, kw), down: (r, c_in) → (r, c_in·kh·kw) in PyTorch's (c_in, kh, kw) flattening.
    """
    d = np.einsum("ijhw,jc->ichw", mid.astype(np.float64), down.reshape(down.shape[0], -1).astype(np.float64))
    return d.reshape(d.shape[0], -1)  # (r, c_in·kh·kw)


def load_factors(src: TensorSource, info: LayerInfo, dk: str, uk: str) -> LoraDelta:
    """One plain layer's factors, down (r, in) and up (out, r) (conv flattened): from a .safetensors
    file as stored (`_stored.StoredDelta`: decoded only when asked for; a bf16 layer's bit
    patterns go to the Gram products, which widen them block by block), else as read."""
    stored = read_stored(src, info, (dk, uk))
    if stored is not None:
        return stored
    down, up = src.get(dk).reshape(info.rank, -1), src.get(uk).reshape(info.out_features, info.rank)
    return LoraDelta(info, down, up)


def load_kohya_lora(src: TensorSource, info: LayerInfo) -> LoraDelta:
    roles = info.extras["roles"]
    if "mid" not in roles:
        return load_factors(src, info, roles["down"], roles["up"])
    down = src.get(roles["down"])  # (r, c_in, 1, 1) beside a Tucker core (r, r, kh, kw)
    down = tucker_down(src.get(roles["mid"]), down.reshape(down.shape[0], -1))  # (r, c_in·kh·kw)
    up = src.get(roles["up"]).reshape(info.out_features, -1)  # (out, r)
    return LoraDelta(info, down.reshape(down.shape[0], -1), up)


# --- names -------------------------------------------------------------------------------------


def kohya_name(path: str, two_text_encoders: bool = False) -> str:
    """Dotted module path → kohya name: 'text_encoder.a.b' → 'lora_te_a_b' ('lora_te1_a_b' beside a
    text_encoder_2), 'unet.a.b' and 'a.b' (no component: one model) → 'lora_unet_a_b'."""
    head, _, rest = path.partition(".")
    if head in KOHYA_PREFIXES and rest:
        prefix = "lora_te" if head == "text_encoder" and not two_text_encoders else KOHYA_PREFIXES[head]
        return f"{prefix}_{rest.replace('.', '_')}"
    return f"lora_unet_{path.replace('.', '_')}"


def match_spelling(path: str | None, flat: str) -> str:
    """The cross-format match key: the kohya name of the dotted `path` if known, else the flattened
    name itself; the first text encoder is always "lora_te1_" (SD1/2 files say "lora_te_")."""
    key = kohya_name(path, two_text_encoders=True) if path is not None else flat
    return "lora_te1_" + key[len("lora_te_") :] if key.startswith("lora_te_") else key


def read_name_map(metadata: Mapping[str, str], path: str) -> dict[str, str]:
    """NAMES_KEY of a lorascope-written file: {flattened name: dotted path} ({} when absent)."""
    raw = metadata.get(NAMES_KEY)
    if not raw:
        return {}
    names = json_loads(raw, path, f"metadata {NAMES_KEY} is not valid JSON ({{}})")
    if not isinstance(names, dict):
        raise FormatError(f"metadata {NAMES_KEY} must be a JSON object", path=path)
    out: dict[str, str] = {}
    named: dict[str, str] = {}  # dotted name -> the first flattened name mapped to it
    for flat, dotted in names.items():
        if not isinstance(dotted, str):
            raise FormatError(f"metadata {NAMES_KEY}: {flat} must map to a string", path=path, keys=[flat])
        first = named.setdefault(dotted, flat)
        if first != flat:
            raise FormatError(
                f"metadata {NAMES_KEY} maps two modules to one name {dotted}: {first} and {flat}",
                path=path,
                keys=[first, flat],
            )
        out[flat] = dotted
    return out


def carried_metadata(
    source: Adapter | None, own_format: str, foreign: tuple[str, ...] = ()
) -> dict[str, str]:
    """Metadata a rewritten file keeps: a same-format source's (not the name map, not the `sshs_*`
    hashes of tensors that changed, not PEFT_KEY, which `training_metadata` writes afresh); from
    another format only the keys starting with `foreign`."""
    if source is None:
        return {}
    if source.format == own_format:
        dropped = (NAMES_KEY, PEFT_KEY)
        return {
            k: str(v) for k, v in source.metadata.items() if k not in dropped and not k.startswith("sshs_")
        }
    return {k: str(v) for k, v in source.metadata.items() if foreign and k.startswith(foreign)}


# Metadata key of lorascope-written kohya / LyCORIS files: JSON of the PEFT config fields that
# describe the whole adapter, so that PEFT → kohya → PEFT keeps them (PEFT picks the model class
# from task_type).  Field -> the JSON types it may have.
PEFT_KEY = "lorascope_peft_config"
PEFT_FIELDS: dict[str, tuple[type, ...]] = {
    "task_type": (str, type(None)),
    "base_model_name_or_path": (str, type(None)),
    "revision": (str, type(None)),
    "lora_dropout": (int, float),
    "bias": (str,),
    "fan_in_fan_out": (bool,),
    "use_rslora": (bool,),
}


def training_metadata(source: Adapter, rows: list[tuple[int, float]]) -> dict[str, str]:
    """What a kohya / LyCORIS file says about the layers `rows` [(rank, alpha)] and where they come
    from: ss_network_dim / ss_network_alpha recomputed ("Dynamic" when they differ, as sd-scripts'
    resize_lora.py writes), ss_sd_model_name from the source's base model where the source's own
    metadata lacks it, and PEFT_KEY with the source's PEFT_FIELDS."""
    ranks = {r for r, _ in rows}
    alphas = {round(a, 6) for _, a in rows}
    meta = {
        "ss_network_dim": str(ranks.pop()) if len(ranks) == 1 else "Dynamic",
        "ss_network_alpha": f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic",
    }
    base = source.config.get("base_model_name_or_path")
    if base and not source.metadata.get("ss_sd_model_name"):
        meta["ss_sd_model_name"] = str(base)
    fields = {k: source.config[k] for k in PEFT_FIELDS if k in source.config}
    if fields:
        meta[PEFT_KEY] = json.dumps(fields, sort_keys=True)
    return meta


def read_peft_fields(metadata: Mapping[str, str], path: str) -> dict[str, Any]:
    """PEFT_KEY of a lorascope-written file as config fields ({} when absent; unknown fields,
    from a later version, are skipped)."""
    raw = metadata.get(PEFT_KEY)
    if not raw:
        return {}
    fields = json_loads(raw, path, f"metadata {PEFT_KEY} is not valid JSON ({{}})")
    if not isinstance(fields, dict):
        raise FormatError(f"metadata {PEFT_KEY} must be a JSON object", path=path)
    out = {}
    for key, kinds in PEFT_FIELDS.items():
        if key in fields:
            value = fields[key]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise FormatError(
                    f"metadata {PEFT_KEY}: {key} has the wrong type ({short_repr(value)})", path=path
                )
            out[key] = value
    return out


# --- writing plain LoRA / LoCon with kohya keys (kohya and LyCORIS) -------------------------------


def write_lora_keys(
    adapter: Adapter,
    dest: str | Path,
    spec: FormatSpec,
    spell: Callable[[LayerInfo], str],
    metadata: Callable[[list[tuple[int, float]]], dict[str, str]],
) -> Path:
    """Write every layer as `<name>.lora_down.weight` / `.lora_up.weight` / `.alpha` (float64
    scalar alpha = scale·r, so alpha / r gives the scale back), streamed one layer at a time.

    `spell(info)` gives the file's name for a layer; its dotted path (a dotted name, or the
    `dotted_name` a flat one was read with) is recorded in NAMES_KEY.
    `metadata([(rank, alpha), ...])` is called after the last layer."""
    names: dict[str, str] = {}  # file name -> dotted path, where known
    seen: dict[str, str] = {}  # file name -> layer name
    rows: list[tuple[int, float]] = []
    with SafetensorsWriter(dest, reserve=header_room(adapter.names)) as out:
        for delta in adapter.iter_deltas():  # one layer's factors alive at a time
            info = delta.info
            # down (r, in | c_in, kh, kw), up (out, r[, 1, 1]); a StoredDelta's as StoredFactors
            down, up = stored_factors(delta, spec, adapter.path, keep_stored=True)
            k = spell(info)
            if k in seen:
                both = f"layers {seen[k]} and {info.name}"
                raise FormatError(f"{both} map to the same {spec.name} name {k}", path=adapter.path)
            seen[k] = info.name
            path = info.extras.get("dotted_name") or (info.name if "." in info.name else None)
            if path is not None:
                names[k] = path
            alpha = info.scale * info.rank
            out.add(f"{k}.lora_down.weight", *down)
            out.add(f"{k}.lora_up.weight", *up)
            out.add(f"{k}.alpha", np.asarray(alpha, dtype=np.float64), "fp64")  # ()
            rows.append((info.rank, alpha))
        meta = metadata(rows)
        if names:
            meta[NAMES_KEY] = json.dumps(names)
        out.close(meta)
    return Path(dest)
