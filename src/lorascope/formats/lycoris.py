"""LyCORIS (PyPI `lycoris-lora`) LoHa and LoKr, plus LoCon layers in the same file.

Every layer is returned as an *exact* low-rank product ΔW = scale · up @ down, so the audit's
Gram core applies unchanged and no dense ΔW is ever formed:

* LoHa, ΔW = s·(A1 B1) ⊙ (A2 B2) with A: (out, r), B: (r, in).  The Hadamard product of two
  rank-r products is a rank-≤ r1·r2 product of Khatri–Rao products:
      up   = A1 •row A2   (out, r1·r2)   up[o, (i, j)]   = A1[o, i]·A2[o, j]
      down = B1 •col B2   (r1·r2, in)    down[(i, j), c] = B1[i, c]·B2[j, c]
  Tucker conv (hada_t1/t2 (r, r, kh, kw), hada_w*_a (r, out), hada_w*_b (r, c_in)) first becomes
  A = w_aᵀ, B[i, (c, h, w)] = Σ_j t[i, j, h, w]·w_b[j, c], which is exact.
* LoKr, ΔW = s·kron(W1, W2) with W = w or w_a @ w_b (or Tucker(t2, w2_a, w2_b)).  Since
  kron(U1 D1, U2 D2) = kron(U1, U2) @ kron(D1, D2), writing each W as U @ D (a stored full W is
  I @ W or W @ I, whichever inner size is smaller) gives up = kron(U1, U2), down = kron(D1, D2).
  For conv, kron(w1[..., None, None], W2) flattened equals kron(w1, W2 flattened to (o2, i2·kh·kw)).

Scale: alpha / lora_dim (LyCORIS stores alpha·lora_dim/r_factor, so rs_lora needs no special
case); no alpha means scale 1; a LoKr with both W1 and W2 stored whole has scale 1 (LyCORIS forces
alpha = lora_dim there and lora_dim is not recoverable from the file).

Ranks: `LayerInfo.rank` is the allocated lora_dim, so `params` and `utilisation = stable_rank /
lora_dim` are per allocated dimension; `extras["max_rank"]` is the largest rank ΔW can reach
(min(r1·r2, out, in) for LoHa, rank bound of W1 × rank bound of W2 for LoKr).  LoHa/LoKr stable and
energy ranks can therefore exceed lora_dim, and utilisation can exceed 1.  Not handled: other
LyCORIS algorithms (full/diff, IA3, (B)OFT, GLoRA): their keys are reported as not understood.

Writing (`write`): plain LoRA / LoCon layers only (`lora_down.weight`, `lora_up.weight`, float64
`alpha` = scale·r), named as LyCORIS's own wrapper names modules: `lycoris_` + the dotted path with
"." → "_" (a name that is already flat is kept).  The `lycoris_` names are what tell the file apart
from a kohya file (same keys): a file of LoRA layers with sd-scripts names (`lora_unet_…`) is
detected as kohya; read it with `format="lycoris"` to keep this view.  As in kohya files, the dotted
paths are stored in the metadata key `lorascope_module_names`.  LoHa/LoKr layers are not written.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ..types import Adapter, LayerInfo, LoraDelta, StructuredDelta, frozen_mapping
from ._checks import reject_leftovers
from ._contract import FormatSpec, read_options
from ._io import TensorSource, open_safetensors
from ._keys import (
    KOHYA_ROLES,
    carried_metadata,
    compile_rules,
    group_keys,
    header_keys,
    kohya_lora_layer,
    load_kohya_lora,
    match_spelling,
    missing_pair,
    read_alpha,
    read_name_map,
    read_peft_fields,
    training_metadata,
    tucker_down,
    write_lora_keys,
)

SPEC = FormatSpec(
    name="lycoris",
    read_options={},
    directory=False,
    file_name=None,
    kinds=("linear", "conv"),
    flat_names=True,
    components=True,
    passthrough=False,
)

# Module names are flattened paths: lora_unet_…/lora_te_… (kohya network) or lycoris_… (wrapper).
MODULE = r"(?P<m>[A-Za-z][A-Za-z0-9_]*)"
LOHA_ROLES = {r: r for r in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")}
LOKR_ROLES = {
    r: r for r in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
}
RULES = compile_rules(MODULE, {**KOHYA_ROLES, **LOHA_ROLES, **LOKR_ROLES})
_COMMON = {"alpha", "dora_scale"}
_ALGO_KEY = re.compile(r"\.(hada_|lokr_)")


def sniff(path: str | Path) -> bool:
    keys = header_keys(path)
    if not keys:
        return False
    return any(_ALGO_KEY.search(k) or k.startswith("lycoris_") for k in keys)


def read(path: str | Path, **options: Any) -> Adapter:
    read_options(SPEC, options, path)
    src = open_safetensors(path)
    by_module, leftovers = group_keys(src.keys(), RULES, src.path)
    names = read_name_map(src.metadata, str(path))
    layers = [_layer(src, module, roles, names.get(module)) for module, roles in by_module.items()]
    reject_leftovers(src.path, leftovers, "LyCORIS LoRA/LoHa/LoKr tensors")
    algos = sorted({layer.extras["algo"] for layer in layers})
    notes = [
        f"LyCORIS {'/'.join(algos)}: rank = allocated lora_dim; "
        "max_rank = r1·r2 (LoHa) or rank(W1)·rank(W2) (LoKr)"
    ]
    if any(layer.dora for layer in layers):
        notes.append("DoRA (weight_decompose): the low-rank direction is audited; dora_scale vectors are not")
    return Adapter(
        format="lycoris",
        layers=tuple(layers),
        loader=lambda info: _load(src, info),
        path=str(path),
        config=frozen_mapping(read_peft_fields(src.metadata, src.path)),
        metadata=frozen_mapping(src.metadata),
        notes=tuple(notes),
    )


def model_path(info: LayerInfo) -> str | None:
    """The dotted path lorascope recorded for this layer; None for other LyCORIS files."""
    return info.extras.get("dotted_name")


def match_key(info: LayerInfo) -> str:
    return match_spelling(model_path(info), info.name)


def write(adapter: Adapter, dest: str | Path, *, source: Adapter | None = None) -> Path:
    """Write the adapter's plain LoRA / LoCon layers as one LyCORIS file (module docstring)."""

    def spell(info: LayerInfo) -> str:
        return f"lycoris_{info.name.replace('.', '_')}" if "." in info.name else info.name

    def metadata(rows: list[tuple[int, float]]) -> dict[str, str]:
        src = source if source is not None else adapter
        return {**carried_metadata(src, "lycoris", ("ss_",)), **training_metadata(src, rows)}

    return write_lora_keys(adapter, dest, SPEC, spell, metadata)


def _layer(src: TensorSource, name: str, roles: dict[str, str], dotted: str | None) -> LayerInfo:
    empty = sorted(k for r, k in roles.items() if r not in _COMMON and 0 in src.shape(k))
    if empty:  # rank 0 or an empty dimension: nothing to divide alpha by, nothing to audit
        raise FormatError(
            f"layer {name}: {empty[0]} has shape {list(src.shape(empty[0]))}; a factor needs rank ≥ 1 "
            "and non-empty dimensions",
            path=src.path,
            keys=empty,
        )
    algos = {r.split("_")[0] for r in roles if r not in _COMMON} & {"hada", "lokr"}
    if len(algos) > 1:
        raise FormatError(
            f"layer {name}: mixes LoHa and LoKr tensors", path=src.path, keys=sorted(roles.values())
        )
    if not algos:
        info = kohya_lora_layer(src, name, roles, {"dotted_name": dotted} if dotted else {})
        return _with(info, algo="lora", max_rank=info.rank)
    extra = sorted(k for r, k in roles.items() if r in KOHYA_ROLES and r not in _COMMON)
    if extra:
        raise FormatError(
            f"layer {name}: LoRA tensors mixed with LyCORIS ones: {', '.join(extra)}",
            path=src.path,
            keys=extra,
        )
    info = _loha_info(src, name, roles) if "hada" in algos else _lokr_info(src, name, roles)
    return _with(info, dotted_name=dotted) if dotted else info


def _with(info: LayerInfo, **extras: Any) -> LayerInfo:
    return replace(info, extras=frozen_mapping({**info.extras, **extras}))


def _bad(src: TensorSource, name: str, roles: dict[str, str], what: str) -> FormatError:
    shapes = ", ".join(f"{k} {list(src.shape(k))}" for k in sorted(roles.values()) if not k.endswith("alpha"))
    return FormatError(f"layer {name}: {what} ({shapes})", path=src.path, keys=sorted(roles.values()))


def _scale(
    src: TensorSource, name: str, roles: dict[str, str], lora_dim: int | None
) -> tuple[float, float | None]:
    alpha = read_alpha(src, roles["alpha"], name) if "alpha" in roles else None
    if lora_dim is None or alpha is None or alpha == 0:
        return 1.0, alpha
    return alpha / lora_dim, alpha


def _loha_info(src: TensorSource, name: str, roles: dict[str, str]) -> LayerInfo:
    factors = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    missing_pair(src, name, roles, factors)
    s = {r: src.shape(roles[r]) for r in LOHA_ROLES if r in roles}
    if any(len(s[k]) != 2 for k in factors):
        raise _bad(src, name, roles, "LoHa factors must be 2-D")
    tucker = "hada_t1" in s or "hada_t2" in s
    if tucker:  # w_a (r, out), w_b (r, c_in), t (r, r, kh, kw)
        missing_pair(src, name, roles, ("hada_t1", "hada_t2"))
        (r1, out), (r1b, c_in), (r2, out2), (r2b, c_in2) = (s[k] for k in factors)
        kernel = tuple(s["hada_t1"][2:])
        ok = s["hada_t1"] == (r1, r1, *kernel) and s["hada_t2"] == (r2, r2, *kernel) and len(kernel) == 2
        inn, weight_shape = c_in * math.prod(kernel), (out, c_in, *kernel)
    else:  # w_a (out, r), w_b (r, in·kh·kw)
        (out, r1), (r1b, inn), (out2, r2), (r2b, c_in2) = (s[k] for k in factors)
        ok, c_in, weight_shape = True, inn, ()
    if not (ok and r1 == r1b and r2 == r2b and out == out2 and c_in == c_in2):
        raise _bad(src, name, roles, "LoHa factor shapes do not fit together")
    scale, alpha = _scale(src, name, roles, r1)
    extras = {"algo": "loha", "tucker": tucker, "alpha": alpha, "roles": dict(roles)}
    extras.update(max_rank=min(r1 * r2, out, inn), keys=(roles["hada_w1_b"], roles["hada_w1_a"]))
    extras["side_keys"] = tuple((roles[f"hada_w{n}_a"], roles[f"hada_w{n}_b"]) for n in (1, 2))
    return LayerInfo(
        name=name,
        kind="conv" if tucker else "linear",
        rank=r1,
        out_features=out,
        in_features=inn,
        scale=scale,
        dtype=src.dtype(roles["hada_w1_a"]),
        weight_shape=weight_shape,
        dora="dora_scale" in roles,
        extras=frozen_mapping(extras),
    )


def _lokr_side(
    src: TensorSource, name: str, roles: dict[str, str], n: int
) -> tuple[int, int, int | None, int]:
    """(rows, cols flattened, lora_dim or None if stored whole, rank bound) of W1 (n=1) or W2 (n=2)."""
    full, a, b, t = f"lokr_w{n}", f"lokr_w{n}_a", f"lokr_w{n}_b", f"lokr_t{n}"
    if full in roles:
        if a in roles or b in roles or t in roles:
            raise _bad(src, name, roles, f"both {full} and its factors are present")
        shape = src.shape(roles[full])  # (o, i) or, for w2 only, (o, i, kh, kw)
        if len(shape) not in ((2,) if n == 1 else (2, 4)):
            raise _bad(src, name, roles, f"{full} has {len(shape)} dimensions")
        rows, cols = shape[0], math.prod(shape[1:])
        return rows, cols, None, min(rows, cols)
    missing_pair(src, name, roles, (a, b))
    sa, sb = src.shape(roles[a]), src.shape(roles[b])
    if t in roles:  # Tucker: t (r, r, kh, kw), w_a (r, o), w_b (r, c_in)
        st = src.shape(roles[t])
        if len(st) != 4 or len(sa) != 2 or len(sb) != 2 or st[:2] != (sa[0], sb[0]):
            raise _bad(src, name, roles, f"{t} does not fit {a}/{b}")
        rows, cols, r = sa[1], sb[1] * math.prod(st[2:]), sa[0]
    else:  # w_a (o, r), w_b (r, i·kh·kw)
        if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[0]:
            raise _bad(src, name, roles, f"{a} and {b} ranks differ")
        rows, cols, r = sa[0], sb[1], sa[1]
    return rows, cols, r, min(r, rows, cols)


def _lokr_info(src: TensorSource, name: str, roles: dict[str, str]) -> LayerInfo:
    o1, i1, r1, k1 = _lokr_side(src, name, roles, 1)
    o2, i2, r2, k2 = _lokr_side(src, name, roles, 2)
    lora_dim = r1 if r1 is not None else r2
    scale, alpha = _scale(src, name, roles, lora_dim)
    w2_shape = src.shape(roles["lokr_w2"]) if "lokr_w2" in roles else ()
    kernel = tuple(src.shape(roles["lokr_t2"])[2:]) if "lokr_t2" in roles else tuple(w2_shape[2:])
    conv = bool(kernel)
    out, inn = o1 * o2, i1 * i2
    weight_shape = (out, inn // math.prod(kernel), *kernel) if conv else ()
    rank = lora_dim if lora_dim is not None else min(o1, i1) * min(o2, i2)  # both whole: U·D inner size
    # _lokr_side raised unless each side has its whole matrix or both of its factors
    w1 = roles["lokr_w1"] if "lokr_w1" in roles else roles["lokr_w1_b"]
    w2 = roles["lokr_w2"] if "lokr_w2" in roles else roles["lokr_w2_a"]
    keys = (w1, w2)
    extras: dict[str, Any] = {"algo": "lokr", "alpha": alpha, "roles": dict(roles), "max_rank": k1 * k2}
    extras["keys"] = keys
    extras["side_keys"] = tuple(_side_keys(roles, n) for n in (1, 2))  # (U key, D key) per side
    return LayerInfo(
        name=name,
        kind="conv" if conv else "linear",
        rank=rank,
        out_features=out,
        in_features=inn,
        scale=scale,
        dtype=src.dtype(keys[1]),
        weight_shape=weight_shape,
        dora="dora_scale" in roles,
        extras=frozen_mapping(extras),
    )


def _side_keys(roles: dict[str, str], n: int) -> tuple[str, str]:
    """The keys holding U and D of one Kronecker side (`_side_factors`); the Tucker core counts as D."""
    full = roles.get(f"lokr_w{n}")
    if full is not None:
        return full, full
    return roles[f"lokr_w{n}_a"], roles.get(f"lokr_t{n}", roles[f"lokr_w{n}_b"])


def _f64(src: TensorSource, key: str) -> np.ndarray:
    return np.asarray(src.get(key), dtype=np.float64)


def _side_factors(src: TensorSource, roles: dict[str, str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """W = U @ D for one Kronecker side; U: (rows, k), D: (k, cols)."""
    full, a, b, t = f"lokr_w{n}", f"lokr_w{n}_a", f"lokr_w{n}_b", f"lokr_t{n}"
    if full in roles:
        w = _f64(src, roles[full])
        w = w.reshape(w.shape[0], -1)  # (rows, cols)
        rows, cols = w.shape
        return (np.eye(rows), w) if rows <= cols else (w, np.eye(cols))
    if t in roles:
        return _f64(src, roles[a]).T, tucker_down(
            _f64(src, roles[t]), _f64(src, roles[b])
        )  # (o, r), (r, c·kh·kw)
    return _f64(src, roles[a]), _f64(src, roles[b]).reshape(src.shape(roles[b])[0], -1)  # (o, r), (r, i)


def _load(src: TensorSource, info: LayerInfo) -> LoraDelta:
    roles, algo = info.extras["roles"], info.extras["algo"]
    if algo == "lora":
        return load_kohya_lora(src, info)
    if algo == "lokr":
        u1, d1 = _side_factors(src, roles, 1)
        u2, d2 = _side_factors(src, roles, 2)
        return StructuredDelta(info, "kron", ((u1, d1), (u2, d2)))  # plain factors: inner k1·k2
    a1, b1 = _f64(src, roles["hada_w1_a"]), _f64(src, roles["hada_w1_b"])
    a2, b2 = _f64(src, roles["hada_w2_a"]), _f64(src, roles["hada_w2_b"])
    if info.extras["tucker"]:
        a1, b1 = a1.T, tucker_down(_f64(src, roles["hada_t1"]), b1)  # (out, r1), (r1, c·kh·kw)
        a2, b2 = a2.T, tucker_down(_f64(src, roles["hada_t2"]), b2)
    return StructuredDelta(info, "hadamard", ((a1, b1), (a2, b2)))  # plain factors: Khatri–Rao, r1·r2
