"""Base-model weights for the update-to-base ratios: open a model lazily, map layers, exact norms.

Contract:
* `open_base(path)` reads only safetensors *headers*: a Hugging Face model folder (`model.safetensors`,
  or shards listed by `*.safetensors.index.json`), a diffusers pipeline folder (`model_index.json`:
  each component folder's keys get the component name as prefix, `unet.down_blocks…`), or one
  `.safetensors` file.  No code from the folder is run (there is no `trust_remote_code`), no
  config is needed, and torch is not imported.  `pytorch_model.bin` is never unpickled.
* `resolve` maps an audited layer to the base tensor `<module>.weight`: the exact module path, else
  the path with up to two leading components dropped from the adapter's side (`bert.encoder…` →
  `encoder…`) or added on the base's side (`layers.0…` → `model.layers.0…`), fewest first and
  unique only; names without dots (kohya `lora_unet_…`, `lora_te_…`) are compared with the base
  paths spelt with `_`.  A layer that maps to nothing, to several weights, or to a weight of another
  shape is reported, never dropped silently.
* `measure` reads the mapped weights one at a time (only those), flattens conv kernels to
  (out, c_in·kh·kw) as the factors are, and computes ‖W‖_F and ‖W‖₂ in float64 (`spectral_norm`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AdapterNotFoundError, FormatError
from ..formats import SafetensorsSource
from ..parallel import serial
from ..types import LayerInfo
from .norms import spectral_norm

CANONICAL = ("model.safetensors", "diffusion_pytorch_model.safetensors")
# flat-name prefix -> the pipeline component it lives in ("" when unknown)
FLAT_PREFIXES = {
    "lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3", "lora_te_": "text_encoder", "lora_transformer_": "transformer",
    "lycoris_": "", "lora_": "",
}  # fmt: skip


class BaseModelNotFoundError(AdapterNotFoundError):
    hint = "pass a local model folder holding *.safetensors weights, or one .safetensors file"


@dataclass
class BaseWeights:
    """Every tensor key of a base model and the shard that holds it (headers only)."""

    path: str
    where: dict[str, tuple[SafetensorsSource, str]] = field(default_factory=dict)  # key -> (shard, its key)

    def shape(self, key: str) -> tuple[int, ...]:
        source, inner = self.where[key]
        return source.shape(inner)

    def get(self, key: str) -> np.ndarray:
        source, inner = self.where[key]
        return source.get(inner)

    def modules(self) -> dict[str, str]:
        """module path -> weight key, for every `….weight` tensor with ≥ 2 dimensions."""
        return {
            k[: -len(".weight")]: k for k in self.where if k.endswith(".weight") and len(self.shape(k)) >= 2
        }


def open_base(path: str | Path) -> BaseWeights:
    p = Path(path)
    if not p.exists():
        hub_id = not p.is_absolute() and len(p.parts) == 2 and not str(path).startswith(".")
        why = " (a Hub id? lorascope reads local files only: download the model and pass its folder)"
        raise BaseModelNotFoundError("base model not found" + (why if hub_id else ""), path=p)
    base = BaseWeights(str(p))
    if p.is_file():
        if p.suffix != ".safetensors":
            raise FormatError("a base model file must be .safetensors", path=p)
        _add(base, [p], "")
    elif (p / "model_index.json").is_file():  # diffusers pipeline: one folder per component
        for sub in sorted(d for d in p.iterdir() if d.is_dir()):
            shards = _shards(sub, required=False)
            _add(base, shards, f"{sub.name}.")
    else:
        _add(base, _shards(p, required=True), "")
    if not base.where:
        raise FormatError("no .safetensors weights in the base model folder", path=p)
    return base


def _shards(d: Path, *, required: bool) -> list[Path]:
    """The weight files of one model folder: an index's shards, the canonical file, or all."""
    indexes = sorted(d.glob("*.safetensors.index.json"))
    canonical = [i for i in indexes if i.name in {f"{c}.index.json" for c in CANONICAL}]
    if canonical or indexes:
        index = (canonical or indexes)[0]
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise FormatError("not a safetensors index (no weight_map object)", path=index) from None
        missing = [f for f in files if not (d / f).is_file()]
        if missing:
            raise FormatError(f"shard {missing[0]} listed in the index is missing", path=index)
        return [d / f for f in files]
    found = sorted(d.glob("*.safetensors"))
    named = [f for f in found if f.name in CANONICAL]
    if named or found:
        return named[:1] or found
    if required:
        bins = sorted(f.name for f in d.glob("*.bin"))
        why = f" ({', '.join(bins)} is a pickle and is not read)" if bins else ""
        raise FormatError(f"no .safetensors weights in the base model folder{why}", path=d)
    return []


def _add(base: BaseWeights, shards: Sequence[Path], prefix: str) -> None:
    for shard in shards:
        source = SafetensorsSource(shard)
        for key in source.keys():
            full = prefix + key
            if full in base.where:
                other = base.where[full][0].path
                raise FormatError(f"tensor {key!r} is in two shards ({other} and {shard})", path=base.path)
            base.where[full] = (source, key)


@dataclass(frozen=True)
class Match:
    key: str | None  # the base weight's key, or None
    problem: str | None = None  # why there is none: "missing", "ambiguous: …", "shape …"


def resolve(names: Sequence[str], modules: dict[str, str]) -> dict[str, Match]:
    """Adapter module paths -> base weight keys (rules in the module docstring)."""
    up: dict[int, dict[str, list[str]]] = {1: {}, 2: {}}  # base path minus k leading parts -> paths
    flat: dict[str, list[str]] = {}
    for module in modules:
        parts = module.split(".")
        for k in (1, 2):
            if len(parts) > k:
                up[k].setdefault(".".join(parts[k:]), []).append(module)
        for k in range(0, min(3, len(parts))):
            flat.setdefault("_".join(parts[k:]), []).append(module)
    out = {}
    for name in names:
        out[name] = _resolve_one(name.removeprefix("base_model.model."), modules, up, flat)
    return out


def _resolve_one(name: str, modules, up, flat) -> Match:
    if "." not in name:
        prefix = next((p for p in FLAT_PREFIXES if name.startswith(p)), "")
        found = flat.get(name[len(prefix) :], [])
        if len(found) > 1 and FLAT_PREFIXES.get(prefix):  # SDXL: te1 and te2 spell the same paths
            found = [f for f in found if f.startswith(FLAT_PREFIXES[prefix] + ".")] or found
        return _unique(found, modules)
    parts = name.split(".")
    for k in (0, 1, 2):
        if k and len(parts) > k and ".".join(parts[k:]) in modules:
            return Match(modules[".".join(parts[k:])])
        if not k and name in modules:
            return Match(modules[name])
        if k and up[k].get(name):
            return _unique(up[k][name], modules)
    return Match(None, "missing")


def _unique(found: list[str], modules: dict[str, str]) -> Match:
    if len(found) == 1:
        return Match(modules[found[0]])
    if not found:
        return Match(None, "missing")
    return Match(None, f"ambiguous: {', '.join(sorted(found)[:3])}")


@dataclass(frozen=True)
class BaseNorm:
    key: str
    shape: tuple[int, ...]
    sigma_max: float  # ‖W‖₂ of the (flattened) base weight
    frobenius: float  # ‖W‖_F
    method: str  # "svd" | "lanczos"


def _shape_problem(info: LayerInfo, shape: tuple[int, ...]) -> str | None:
    flat = (shape[0], int(np.prod(shape[1:])))
    if flat in ((info.out_features, info.in_features), (info.in_features, info.out_features)):
        return None
    return f"shape {list(shape)} does not fit the layer's {info.out_features}×{info.in_features}"


def measure(
    layers: Sequence[LayerInfo],
    names: Sequence[str],
    base: BaseWeights,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[dict[str, BaseNorm], dict[str, str]]:
    """({layer: BaseNorm}, {layer: problem}); `names` are the model paths to map (one per layer)."""
    matches = resolve(names, base.modules())
    norms: dict[str, BaseNorm] = {}
    problems: dict[str, str] = {}
    for i, (info, name) in enumerate(zip(layers, names, strict=True)):
        m = matches[name]
        if m.key is None:
            problems[info.name] = m.problem or "missing"
            continue
        shape = base.shape(m.key)
        why = _shape_problem(info, shape)
        if why:
            problems[info.name] = f"{m.key}: {why}"
            continue
        w = base.get(m.key).reshape(shape[0], -1).astype(np.float64)  # (out, in) or (in, out)
        with serial():  # one base matrix at a time (each can be GBs in float64): BLAS within cores()
            sigma, method = spectral_norm(w)
        norms[info.name] = BaseNorm(m.key, shape, sigma, float(np.linalg.norm(w)), method)
        del w
        if progress:
            progress(i + 1, len(layers), f"base {info.name}")
    return norms, problems


def ratios(delta_sigma: float, delta_fro: float, norm: BaseNorm) -> dict[str, Any]:
    """udr = ‖ΔW‖₂/‖W‖₂, udr_f = ‖ΔW‖_F/‖W‖_F, sdi = log10(udr); null where undefined."""
    udr = delta_sigma / norm.sigma_max if norm.sigma_max > 0 else None
    udr_f = delta_fro / norm.frobenius if norm.frobenius > 0 else None
    sdi = float(np.log10(udr)) if udr else None
    return {"udr": udr, "udr_f": udr_f, "sdi": sdi}
