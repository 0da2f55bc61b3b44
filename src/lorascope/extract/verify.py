"""`verify-merge`: does MERGED equal BASE + s·B·A in every layer the adapter targets, and nothing else?

Contract.  BASE and MERGED are safetensors checkpoints (`checkpoint.open_checkpoint`: files, folders,
shards), the ADAPTER any format lorascope reads.  Keys are matched across prefixes (`match_keys`,
`KeyIndex`).  Three kinds of check, one tensor pair in memory at a time (`parallel.ordered_map`,
one worker, BLAS on every core):

* targeted layers: D = MERGED − BASE in float64, and X = s·B·A's SVD from the factors
  (`spectral.truncated_svd`, r directions); one (r, m)·(m, n) product gives every exact sum the
  diagnosis needs (‖D‖², ⟨D, X⟩ = Σσᵢgᵢ, gᵢ = uᵢᵀDvᵢ); X is never formed.  `diagnose.diagnose`
  turns them into a verdict with the tolerance derived from the stored dtypes.
* heads and embeddings the adapter saves in full (PEFT modules_to_save, task heads): MERGED's copy
  against the adapter's, exact or within the rounding of a dtype change; reported on their own.
* every other tensor: MERGED must equal BASE (exactly, or within the rounding of a dtype change).

Bad input (exit 2): shapes that differ between BASE and MERGED, an adapter layer found in neither,
pickles.  Defects (exit 1): everything `diagnose` does not call verified, changed untouched tensors,
missing tensors, heads that differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsontext
from ..errors import FormatError
from ..formats import FORMATS, load
from ..parallel import ordered_map
from ..spectral import truncated_svd
from ..types import Adapter, LayerInfo
from .checkpoint import Checkpoint, KeyIndex, matched_keys, open_checkpoint
from .diagnose import UNIT, Diagnosis, Quantities, bounds, diagnose
from .lowrank import sq_norm

SCHEMA = "lorascope.verify-merge/v1"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class VerifyOptions:
    tol: float | None = None  # replaces the derived Frobenius tolerance of targeted layers
    progress: Progress | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LayerCheck:
    name: str  # the adapter's layer name
    key: str | None  # MERGED's key (None: missing)
    dtypes: tuple[str, str, str]  # (base, merged, adapter)
    diagnosis: Diagnosis | None  # None: missing layer

    @property
    def ok(self) -> bool:
        return self.diagnosis is not None and self.diagnosis.ok

    @property
    def code(self) -> str:
        return "missing" if self.diagnosis is None else self.diagnosis.code

    @property
    def detail(self) -> str:
        return "missing layer: MERGED has no such tensor" if self.diagnosis is None else self.diagnosis.detail

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "key": self.key, "ok": self.ok, "diagnosis": self.code}
        d["detail"] = self.detail
        d["dtypes"] = dict(zip(("base", "merged", "adapter"), self.dtypes, strict=True))
        if self.diagnosis is not None:
            g = self.diagnosis
            d.update(rel_error=g.rel_error, tolerance=g.tolerance, k=g.k, k_resolution=g.k_resolution)
            d.update(correlation=g.correlation, truncated_rank=g.truncated_rank)
        return d


@dataclass(frozen=True)
class TensorCheck:
    key: str
    ok: bool
    code: str  # unchanged, converted, changed, missing, head_matches, head_differs, head_not_applied
    detail: str
    rel: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyReport:
    base: str
    adapter: str
    merged: str
    layers: tuple[LayerCheck, ...]
    heads: tuple[TensorCheck, ...]
    others: tuple[TensorCheck, ...]  # untouched tensors that are not unchanged, and missing ones
    untouched_ok: int
    notes: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return (
            all(x.ok for x in self.layers)
            and all(x.ok for x in self.heads)
            and all(x.ok for x in self.others)
        )

    @property
    def exit_code(self) -> int:
        return 0 if self.verified else 1

    def summary(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "layers": len(self.layers),
            "layer_defects": sum(not x.ok for x in self.layers),
            "heads": len(self.heads),
            "head_defects": sum(not x.ok for x in self.heads),
            "untouched_unchanged": self.untouched_ok,
            "untouched_defects": sum(not x.ok for x in self.others),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "base": self.base,
            "adapter": self.adapter,
            "merged": self.merged,
            "summary": self.summary(),
            "layers": [x.to_dict() for x in self.layers],
            "heads": [x.to_dict() for x in self.heads],
            "untouched": [x.to_dict() for x in self.others],
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())


# --- the pass ---------------------------------------------------------------------------------------


def verify_merge(
    base_path: str | Path,
    adapter_path: str | Path,
    merged_path: str | Path,
    options: VerifyOptions | None = None,
) -> VerifyReport:
    options = options or VerifyOptions()
    base, merged = open_checkpoint(base_path, "BASE"), open_checkpoint(merged_path, "MERGED")
    adapter = load(adapter_path)
    match = matched_keys(base, merged, "BASE")
    pairs = {m: b for b, m in match.pairs}  # merged key -> base key
    index = KeyIndex(merged.keys())
    targets = _targets(adapter, index, base, merged)
    heads = _heads(adapter, index, base, merged, pairs)
    head_keys = {h.key for h in heads}
    bias_keys = {_sibling(k, "bias") for (_, k, _) in targets if k}
    work: list[tuple[str, Any]] = [("layer", t[:2]) for t in targets]
    touched = {k for _, k, _ in targets if k} | head_keys
    untouched = [mk for mk in merged.keys() if mk not in touched and mk not in bias_keys and mk in pairs]
    work += [("tensor", mk) for mk in untouched if merged.is_float(mk) and base.is_float(pairs[mk])]

    def one(item: tuple[str, Any]) -> LayerCheck | TensorCheck:
        kind, what = item
        if kind == "layer":
            info, key = what
            return _check_layer(adapter, info, key, base, merged, pairs, options.tol)
        return _check_untouched(what, pairs[what], base, merged)

    layers: list[LayerCheck] = []
    others: list[TensorCheck] = []
    for i, result in enumerate(ordered_map(one, work, max_workers=1)):
        if options.progress:
            options.progress(i + 1, len(work), getattr(result, "name", getattr(result, "key", "")))
        if isinstance(result, LayerCheck):
            layers.append(result)
        else:
            others.append(result)
    missing = [b for b in match.only_base if base.is_float(b)]
    targeted_base = {b for _, _, b in targets}
    others += [
        TensorCheck(b, False, "missing", "missing in MERGED") for b in missing if b not in targeted_base
    ]
    bad = [x for x in others if not x.ok]
    notes = _notes(adapter, merged, pairs, touched)
    return VerifyReport(
        base=base.path, adapter=str(adapter.path or adapter_path), merged=merged.path,
        layers=tuple(layers), heads=tuple(heads), others=tuple(bad),
        untouched_ok=len(others) - len(bad), notes=tuple(notes),
    )  # fmt: skip


def _sibling(key: str, param: str) -> str:
    return key.rpartition(".")[0] + "." + param


def _targets(
    adapter: Adapter, index: KeyIndex, base: Checkpoint, merged: Checkpoint
) -> list[tuple[LayerInfo, str | None, str | None]]:
    """(layer, MERGED's weight key, BASE's; None where one lacks it) for every adapter layer."""
    module = FORMATS[adapter.format] if adapter.format in FORMATS else None
    base_index = KeyIndex(base.keys())
    out = []
    for info in adapter.layers:
        path = module.model_path(info) if module else info.name
        if path is None:
            raise FormatError(
                f"layer {info.name}: its module path cannot be recovered from the name", path=adapter.path
            )
        key = index.find(path + ".weight")
        if key is None and base_index.find(path + ".weight") is None:
            raise FormatError(
                f"layer {info.name}: no weight {path + '.weight'!r} in BASE or MERGED; is this the adapter "
                "of this model?",
                path=adapter.path,
            )
        out.append((info, key, base_index.find(path + ".weight")))
    return out


def _check_layer(adapter, info: LayerInfo, key, base, merged, pairs, tol) -> LayerCheck:
    dt_a = info.dtype
    if key is None:
        return LayerCheck(info.name, None, ("?", "?", dt_a), None)
    bkey = pairs.get(key)
    if bkey is None:
        raise FormatError(f"layer {info.name}: MERGED's {key!r} has no counterpart in BASE", path=base.path)
    m = merged.get(key)
    m_norm, m_max = math.sqrt(sq_norm(m)), float(np.max(np.abs(m))) if m.size else 0.0
    d = m.reshape(m.shape[0], -1).astype(np.float64)  # (rows, cols)
    del m
    d -= base.get(bkey).reshape(d.shape)
    if info.kind == "embedding":  # PEFT's embedding LoRA stores ΔWᵀ
        d = d.T
    delta = adapter.delta(info.name)
    down, up = delta.down.reshape(delta.down.shape[0], -1), delta.up
    if d.shape != (up.shape[0], down.shape[1]):
        raise FormatError(
            f"layer {info.name}: ΔW is {list(d.shape)} in MERGED but "
            f"{[up.shape[0], down.shape[1]]} in the adapter",
            path=adapter.path,
        )
    svd = truncated_svd(down, up, info.scale, min(info.rank, *d.shape))  # u (m, k), s (k,), vt (k, n)
    g = np.einsum("ij,ij->i", svd.u.T.astype(np.float64) @ d, svd.vt.astype(np.float64))  # (k,)
    s = np.asarray(svd.s, np.float64)
    x_max = (
        abs(info.scale)
        * float(np.max(np.linalg.norm(up.astype(np.float64), axis=1)))
        * float(np.max(np.linalg.norm(down.astype(np.float64), axis=0)))
    )
    q = Quantities(
        d_sq=sq_norm(d), x_sq=float(np.sum(s * s)), dot=float(np.sum(s * g)), m_norm=m_norm, m_max=m_max,
        x_max=x_max, sigma=s, g=g, scale=info.scale, rank=info.rank,
    )  # fmt: skip
    dtypes = (base.dtype(bkey), merged.dtype(key), dt_a)
    return LayerCheck(info.name, key, dtypes, diagnose(q, bounds(dtypes[0], dtypes[1]), tol))


def _conversion(a: str, b: str) -> float:
    """The relative rounding a dtype change a → b may add (0 when the dtypes agree)."""
    return 0.0 if a == b else max(UNIT.get(a, 0.0), UNIT.get(b, 0.0))


def _compare(mk: str, ref: np.ndarray, ref_dtype: str, merged: Checkpoint) -> tuple[float, float, float]:
    """(‖M − ref‖, ‖ref‖, allowed ‖M − ref‖ for a dtype change)."""
    m = merged.get(mk)
    diff = math.sqrt(sq_norm(m.astype(np.float64) - ref.reshape(m.shape)))
    ref_norm = math.sqrt(sq_norm(ref))
    return diff, ref_norm, _conversion(ref_dtype, merged.dtype(mk)) * ref_norm * 1.01


def _check_untouched(mk: str, bk: str, base: Checkpoint, merged: Checkpoint) -> TensorCheck:
    diff, ref, allowed = _compare(mk, base.get(bk), base.dtype(bk), merged)
    if diff == 0:
        return TensorCheck(mk, True, "unchanged", "equal to BASE")
    rel = diff / ref if ref else math.inf
    if diff <= allowed:
        return TensorCheck(mk, True, "converted", "equal to BASE up to the dtype change", rel)
    return TensorCheck(
        mk, False, "changed", f"changed although the adapter does not touch it (relative {rel:.3g})", rel
    )


def _heads(
    adapter: Adapter, index: KeyIndex, base: Checkpoint, merged: Checkpoint, pairs
) -> list[TensorCheck]:
    """modules_to_save tensors: MERGED's copy against the adapter's saved one."""
    if not adapter.modules_to_save or adapter.format != "peft":
        return []
    from ..formats.peft import PREFIX, passthrough_tensors

    out = []
    for key, (arr, dtype) in passthrough_tensors(adapter).items():
        name = key.removeprefix(PREFIX)
        if not any(name.startswith(mod + ".") for mod in adapter.modules_to_save):
            continue
        mk = index.find(name)
        if mk is None:
            out.append(
                TensorCheck(
                    name, False, "missing", "saved by the adapter (modules_to_save) but missing in MERGED"
                )
            )
            continue
        if merged.shape(mk) != tuple(arr.shape):
            raise FormatError(
                f"head {name!r}: shape {list(arr.shape)} in the adapter, {list(merged.shape(mk))} in MERGED",
                path=merged.file(mk),
            )
        diff, ref, allowed = _compare(mk, arr, dtype, merged)
        rel = diff / ref if ref else (0.0 if diff == 0 else math.inf)
        if diff <= allowed:
            out.append(
                TensorCheck(
                    mk, True, "head_matches", "equals the adapter's saved copy (modules_to_save)", rel
                )
            )
            continue
        bk = pairs.get(mk)
        same_as_base = (
            bk is not None
            and merged.is_float(mk)
            and _compare(mk, base.get(bk), base.dtype(bk), merged)[0] == 0
        )
        if same_as_base:
            out.append(
                TensorCheck(
                    mk, False, "head_not_applied", "holds BASE's weights, not the adapter's saved copy", rel
                )
            )
        else:
            out.append(
                TensorCheck(
                    mk,
                    False,
                    "head_differs",
                    f"differs from the adapter's saved copy (relative {rel:.3g})",
                    rel,
                )
            )
    return out


def _notes(adapter: Adapter, merged: Checkpoint, pairs, touched) -> list[str]:
    notes = []
    extra = [k for k in merged.keys() if k not in pairs and k not in touched]
    if extra:
        notes.append(f"{len(extra)} tensors only in MERGED, not checked: {', '.join(extra[:5])}")
    if any("bias" in x.extras for x in adapter.layers):
        notes.append("lora_bias tensors: the bias updates are not checked")
    return notes
