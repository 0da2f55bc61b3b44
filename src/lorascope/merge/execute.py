"""`merge`: N ≥ 2 LoRA adapters (any readable formats, any ranks) → one LoRA adapter, per a plan.

Contract, per layer (the union of the adapters' layers, matched by name — across formats by their
kohya spelling, match.py; an adapter without the layer contributes nothing there):
1. compress-first: an input named in the layer's `compress_first` is truncated to that rank
   (compress.truncated_svd) before anything else;
2. the layer's method (methods.METHODS) with its weights and parameters: factor methods (`linear`,
   `svd`) never form ΔW; dense methods form each ΔWᵢ (float64, out×in, one layer at a time) and
   the merged ΔW is re-factorised to `rank` (default Σ rᵢ, capped at min(out, in)) or `energy` by
   dense.dense_truncated_svd (only the top k triplets, by ARPACK or subspace iteration, checked
   converged; the exact LAPACK SVD where that gains nothing or does not converge); DARE draws
   come from a Generator seeded by (plan.seed, layer index);
3. factors are rounded to the output dtype with scale 1 (the writer stores alpha = rank), except
   `linear`: the common scale c = |w₁s₁| is folded out (layer scale c, upᵢ·wᵢsᵢ/c), so inputs with
   wᵢsᵢ = ±c keep their stored factors exactly, whatever their dtype (`_folded`).
Post-merge check: `rel_error` = ‖intended − written‖_F/‖intended‖_F where *intended* is the
method's exact result on its inputs (after step 1) — computed from the factors for factor methods,
densely for dense ones — and the written file is read back and its factors compared byte for
byte with what was computed (through a blake2b digest per layer recorded while merging).
Memory: `merge_files` writes a lazy adapter (`merge_lazy`) whose layers are merged as the writer
asks for them, so a few layers are alive at once (layers of `energy` plans: see `merge_lazy`).
Refused: DoRA layers (the magnitude vector does not add), mismatched shapes, a non-LoRA writer.
`modules_to_save` tensors (e.g. classifier heads) come from the first adapter; a note says so.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError, InvalidArgumentError, UnsupportedError
from ..formats import check_dest, check_writable, load, output_path, save
from ..order import natural_sorted
from ..parallel import ordered_map, serial
from ..spectral import truncated_svd
from ..types import DTYPE_BYTES, DTYPES, Adapter, LayerInfo, LoraDelta, frozen_mapping, round_to_dtype
from .checks import adapter_label, check_finite_input, checked_error, rel_error
from .dense import dense_truncated_svd
from .match import layer_keys
from .methods import get_method
from .plan import LayerPlan, MergePlan
from .ranks import after_compress, output_rank
from .report import SCHEMA, MergedLayer, MergeReport  # noqa: F401  (SCHEMA: re-exported)

_DENSE_PARALLEL = 1 << 22  # out·in up to this (a 2048² layer: ~5 float64 copies = 168 MB) run in parallel


@dataclass(frozen=True)
class MergeOptions:
    dtype: str | None = None  # output dtype; None: the widest input dtype
    # a tolerance on every layer's post-merge error (MergeReport.over_max_error); None: the default
    # rule, MAX_ERROR for linear and svd, the dense methods' loss reported (report.py)
    max_error: float | None = None
    progress: Callable[[int, int, str], None] | None = None


def merge_adapters(adapters: Sequence[Adapter], plan: MergePlan, options: MergeOptions | None = None):
    """Merge in memory → (merged Adapter, [MergedLayer]).  See the module docstring."""
    lazy, done = merge_lazy(adapters, plan, options)
    deltas = list(lazy.iter_deltas())  # every layer computed now, kept
    merged = Adapter.from_deltas(
        deltas,
        format=lazy.format,
        config=lazy.config,
        metadata=lazy.metadata,
        modules_to_save=lazy.modules_to_save,
    )
    return merged, [done[name][0] for name in lazy.names]


def merge_lazy(adapters: Sequence[Adapter], plan: MergePlan, options: MergeOptions | None = None):
    """The merge as a lazy Adapter → (adapter, done): its loader merges a layer when asked, and
    records `done[name] = (MergedLayer, digest of the factors' bytes)` (see `factor_digest`).

    Every output LayerInfo is known before any layer is merged, so `layers` is exact; `iter_deltas`
    merges the layers on the worker threads of the thread policy (one worker, BLAS on every core,
    when a dense method's out×in matrices are involved).  The output rank follows from the plan
    and the input ranks (`ranks.output_rank`, the rule `_merge_layer` applies too) except where
    the plan uses `energy`: those layers are merged here, up front, and kept in memory until
    they are loaded once (handed out, then dropped; a second load merges again, with the same
    result).  Energy ranks are at most the rank a plan without `energy` would write, so this never
    holds more than the whole merged adapter and holds nothing for plans without `energy`."""
    options = options or MergeOptions()
    _check_inputs(adapters, plan, options)
    groups = _groups(adapters)
    # DARE's draws are seeded by (plan seed, index of the layer in adapter 1's file order): the
    # output lists layers in natural order, the seeds stay those of earlier versions
    index_of = {name: i for i, name in enumerate(groups)}
    groups = {name: groups[name] for name in natural_sorted(groups)}
    done: dict[str, tuple[MergedLayer, bytes]] = {}
    lock = threading.Lock()

    def compute(name: str) -> LoraDelta:
        delta, result = _merge_layer(adapters, groups[name], name, plan, index_of[name], options)
        with lock:  # progress counts layers merged the first time, up front (energy) or streamed
            first = name not in done
            done[name] = (result, factor_digest(delta.down, delta.up))
            if first and options.progress:
                options.progress(len(done), len(groups), name)
        return delta

    kept: dict[str, LoraDelta] = {}
    layers = []
    for name, group in groups.items():
        rank = _planned_rank(adapters, group, plan.for_layer(name))
        if rank is None:  # `energy`: the rank is a result of the merge
            with serial():  # outside the stream's ordered_map: the same thread policy
                kept[name] = compute(name)
            layers.append(kept[name].info)
        else:
            idx = tuple(sorted(group))
            layers.append(_out_info(name, idx, [adapters[i].info(group[i]) for i in idx], rank, options))

    def load_layer(info: LayerInfo) -> LoraDelta:
        return kept.pop(info.name, None) or compute(info.name)

    # dense methods hold a few out×in float64 matrices per layer: large ones one layer at a time with
    # BLAS on every core; small ones (≤ _DENSE_PARALLEL entries) one layer per core, one BLAS
    # thread each (the top-k solver's narrow products gain nothing from more threads, and idle
    # OpenBLAS threads busy-wait, which multiplied the CPU time of a TIES merge on a loaded machine)
    big = any(
        get_method(plan.for_layer(x.name).method).kind == "dense"
        and x.out_features * x.in_features > _DENSE_PARALLEL
        for x in layers
    )

    def stream():
        yield from ordered_map(load_layer, layers, max_workers=1 if big else None)

    first = adapters[0]
    lazy = Adapter(
        format=first.format,
        layers=tuple(layers),
        loader=load_layer,
        stream=stream,
        config=_config(adapters),
        metadata=first.metadata,
        modules_to_save=first.modules_to_save,
    )
    return lazy, done


def _planned_rank(adapters, group: dict[int, str], lp: LayerPlan) -> int | None:
    """The rank `_merge_layer` will write (ranks.output_rank), from LayerInfo only."""
    infos = [adapters[i].info(name) for i, name in sorted(group.items())]
    cap = min(infos[0].out_features, infos[0].in_features)
    read = [x.rank for x in infos]
    merged = [after_compress(lp, i, x.rank, cap) for i, x in zip(sorted(group), infos, strict=True)]
    return output_rank(lp, read, merged, cap)


def _out_info(
    name: str, idx, inputs: Sequence[LayerInfo], rank: int, options: MergeOptions, scale: float = 1.0
) -> LayerInfo:
    """The output LayerInfo of a merged layer: scale 1 (the factors carry every weight and scale),
    or the common scale a linear merge folds out of its factors (`_folded`)."""
    first = inputs[0]
    return LayerInfo(
        name,
        first.kind,
        rank,
        first.out_features,
        first.in_features,
        scale,
        options.dtype or _widest(x.dtype for x in inputs),
        first.weight_shape,
        extras=frozen_mapping({"merged_from": list(idx)}),
    )


def factor_digest(down: np.ndarray, up: np.ndarray) -> bytes:
    """blake2b of the dtype and the exact bytes of down and up: what the post-merge check compares
    with the read-back factors (bf16 is held as float32 both before writing and after reading)."""
    h = hashlib.blake2b(digest_size=32)
    for x in (down, up):
        x = np.ascontiguousarray(x)
        h.update(x.dtype.str.encode())
        h.update(x.data.cast("B"))  # the array's buffer as bytes
    return h.digest()


def _check_inputs(adapters: Sequence[Adapter], plan: MergePlan, options: MergeOptions) -> None:
    if len(adapters) < 2:
        raise InvalidArgumentError("merge needs at least two adapters")
    if len(plan.weights) != len(adapters):
        raise InvalidArgumentError(f"{len(plan.weights)} weights for {len(adapters)} adapters")
    if options.max_error is not None and not 0 <= options.max_error < float("inf"):
        raise InvalidArgumentError(f"max_error must be a number ≥ 0, got {options.max_error}")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    for a in adapters:
        dora = [x.name for x in a.layers if x.dora]
        if dora:
            raise UnsupportedError(
                f"DoRA layer {dora[0]}: DoRA magnitude vectors cannot be merged as LoRA", path=a.path
            )
    known = set(adapters[0].names) | {n for a in adapters for n in a.names}
    unknown = sorted(set(plan.layers) - known)
    if unknown:
        raise InvalidArgumentError(f"the plan names layers no adapter has: {unknown[:3]}")
    for lp in [plan.default, *plan.layers.values()]:
        bad = [i for i in lp.compress_first if i >= len(adapters)]
        if bad:
            raise InvalidArgumentError(
                f"the plan truncates adapter index {bad[0]} (adapter {bad[0] + 1}) before merging; "
                f"there are {len(adapters)} adapters"
            )


def _groups(adapters: Sequence[Adapter]) -> dict[str, dict[int, str]]:
    """{output layer name → {adapter index → that adapter's name for the layer}} (match.py)."""
    by_key: dict[str, dict[int, str]] = {}
    for i, keys in enumerate(layer_keys(adapters)):
        for name, key in keys.items():
            by_key.setdefault(key, {})[i] = name
    for i, a in enumerate(adapters[1:], start=1):
        if not any(0 in g and i in g for g in by_key.values()):
            raise FormatError(
                f"adapter {i + 1} shares no layer with adapter 1 ({adapters[0].path}); "
                "were they trained on the same base model?",
                path=a.path,
            )
    out: dict[str, dict[int, str]] = {}
    for group in by_key.values():
        i = min(group)
        if adapters[i].format != adapters[0].format:
            raise UnsupportedError(
                f"layer {group[i]} is only in adapter {i + 1} ({adapters[i].format}); its name cannot be "
                f"written into adapter 1's {adapters[0].format} format; convert the adapters to one format",
                path=adapters[i].path,
            )
        out[group[i]] = group
    return out


def _merge_layer(
    adapters, group: dict[int, str], name: str, plan: MergePlan, index: int, options: MergeOptions
):
    lp = plan.for_layer(name)
    idx = tuple(sorted(group))
    inputs = [adapters[i].delta(group[i]) for i in idx]
    shapes = {(d.info.out_features, d.info.in_features) for d in inputs}
    if len(shapes) > 1:
        each = ", ".join(
            f"{adapter_label(adapters[i], i)} {d.info.out_features}×{d.info.in_features}"
            for i, d in zip(idx, inputs, strict=True)
        )
        raise FormatError(f"layer {name}: shapes differ across adapters: {each}")
    for i, d in zip(idx, inputs, strict=True):
        check_finite_input(adapters[i], i, d)
    every = plan.layer_weights(name)  # one per adapter
    weights = tuple(every[i] for i in idx)
    factors = [_factor(d, lp.compress_first.get(i)) for i, d in zip(idx, inputs, strict=True)]
    method = get_method(lp.method)
    params = _params(method, lp, factors)
    cap = min(inputs[0].info.out_features, inputs[0].info.in_features)
    rank = output_rank(lp, [d.info.rank for d in inputs], [dn.shape[0] for dn, _, _ in factors], cap)
    scale = 1.0  # the written layer's scale: ΔW = scale·up@down
    if lp.method == "linear":  # c = |wᵢsᵢ| of the first non-zero input becomes the layer's scale
        scale, multipliers = _folded(factors, weights)
        down, up = method.fn([(d, u, 1.0) for d, u, _ in factors], multipliers)  # (Σr, in), (out, Σr)
        intended = None
    elif method.kind == "factor":
        given = {**params, "rank": rank} if rank is not None and "rank" in params else params
        down, up = method.fn(factors, weights, **given)  # (k, in), (out, k)
        intended = None
    else:
        dense = [(u * s) @ d for d, u, s in factors]  # [(out, in)] float64, ours: scratch for the method
        extra = {"rng": np.random.default_rng([plan.seed, index])} if method.needs_rng else {}
        intended = method.fn(dense, weights, **params, **extra, overwrite=True)  # (out, in)
        del dense
        svd = dense_truncated_svd(intended, rank, lp.energy, seed=plan.seed + index)
        down, up = svd.factors("up")
    dtype = options.dtype or _widest(d.info.dtype for d in inputs)
    down_w, up_w = round_to_dtype(down, dtype), round_to_dtype(up, dtype)
    if dtype == "fp16" and not (np.isfinite(down_w).all() and np.isfinite(up_w).all()):
        raise InvalidArgumentError(f"layer {name}: merged factors overflow fp16; use --dtype fp32 or bf16")
    written_up = np.asarray(up_w, np.float64) * scale  # (out, k): what the file's ΔW multiplies out to
    sources = " and ".join(adapter_label(adapters[i], i) for i in idx)
    err, norm = checked_error(name, sources, *rel_error(factors, weights, intended, down_w, written_up))
    info = _out_info(name, idx, [d.info for d in inputs], down_w.shape[0], options, scale)
    result = MergedLayer(
        name=name,
        method=lp.method,
        inputs=idx,
        ranks=tuple(d.info.rank for d in inputs),
        rank=down_w.shape[0],
        weights=weights,
        params=dict(params),
        rel_error=err,
        intended_norm=norm,
        compress_first=dict(lp.compress_first),
        scale=scale,
    )
    return LoraDelta(info, down_w, up_w), result


def _folded(factors, weights) -> tuple[float, tuple[float, ...]]:
    """(c, (wᵢsᵢ/c)ᵢ) with c = |wᵢsᵢ| of the first input where it is non-zero (1.0 if none).

    The linear merge writes upᵢ·(wᵢsᵢ/c) and the layer scale c: an input whose wᵢsᵢ = ±c keeps
    its stored factors bit for bit (x/x = 1 exactly), so a bf16 layer weighted 0.3 is not rounded
    to bf16 a second time; ΔW = c·Σ upᵢ(wᵢsᵢ/c)downᵢ = Σ wᵢ·ΔWᵢ."""
    products = [w * s for (_, _, s), w in zip(factors, weights, strict=True)]
    c = next((abs(x) for x in products if x != 0 and np.isfinite(x)), 1.0)
    return c, tuple(x / c for x in products)


def _factor(d: LoraDelta, k: int | None):
    """(down (r, in), up (out, r), scale) in float64; truncated to rank k first when asked."""
    if k is None or k >= d.info.rank:
        return np.asarray(d.down, np.float64), np.asarray(d.up, np.float64), float(d.scale)
    dn, up = truncated_svd(d.down, d.up, d.scale, k).factors("up")  # ΔW_k = up @ dn
    return dn, up, 1.0


def _params(method, lp: LayerPlan, factors) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "density" in method.params and lp.density is not None:
        out["density"] = lp.density
    if "majority" in method.params:
        out["majority"] = lp.majority
    if method.kind == "factor" and "rank" in method.params:
        out["rank"] = lp.rank
        out["energy"] = lp.energy
    return out


def _widest(dtypes) -> str:
    return max(dtypes, key=lambda t: (DTYPE_BYTES.get(t, 4), t != "bf16"))


def _config(adapters: Sequence[Adapter]) -> dict[str, Any]:
    """The first adapter's config with target_modules covering every adapter's."""
    cfg = dict(adapters[0].config)
    targets = [t for t in (a.config.get("target_modules") for a in adapters) if t]
    if targets and all(isinstance(t, (list, tuple)) for t in targets):
        cfg["target_modules"] = sorted({m for t in targets for m in t})
    elif targets and all(isinstance(t, str) for t in targets) and len(set(targets)) > 1:
        cfg["target_modules"] = "|".join(f"({t})" for t in dict.fromkeys(targets))
    return cfg


def merge_files(
    paths: Sequence[str | Path | Adapter],
    dest: str | Path,
    plan: MergePlan,
    options: MergeOptions | None = None,
    **load_options: Any,
) -> MergeReport:
    """Load, merge, write to `dest` in the first adapter's format, read back and verify."""
    options = options or MergeOptions()
    adapters = [p if isinstance(p, Adapter) else load(p, **load_options) for p in paths]
    fmt = adapters[0].format
    dest = check_dest(output_path(fmt, dest), [a.path for a in adapters])
    check_writable(adapters[0], fmt)  # its layer kinds and modules_to_save go to the output
    merged, done = merge_lazy(adapters, plan, options)
    source = replace(adapters[0], config=merged.config)
    save(merged, dest, format=fmt, source=source)  # layers are merged one at a time as they are written
    results = tuple(done[name][0] for name in merged.names)
    notes = _notes(adapters)
    verified = _verify({name: (done[name][1], done[name][0].scale) for name in merged.names}, dest, fmt)
    sources = tuple(a.path for a in adapters)
    return MergeReport(sources, str(dest), results, tuple(notes), verified, options.max_error)


def _notes(adapters: Sequence[Adapter]) -> list[str]:
    notes = []
    for i, a in enumerate(adapters[1:], start=2):
        if a.modules_to_save and a.modules_to_save != adapters[0].modules_to_save:
            notes.append(
                f"modules_to_save of adapter {i} ({', '.join(a.modules_to_save)}) are not merged: "
                "the output keeps adapter 1's"
            )
        elif a.modules_to_save:
            notes.append(
                f"modules_to_save ({', '.join(a.modules_to_save)}) are copied from adapter 1, not merged"
            )
    return notes


def _verify(digests: dict[str, tuple[bytes, float]], dest, fmt: str) -> bool:
    """Read the written adapter back: same layers, factors byte-equal to what was computed (their
    `factor_digest` recorded while merging), each layer's scale the one merged (to 1e-6 relative)."""
    back = load(dest, format=fmt)
    if set(back.names) != set(digests):
        raise FormatError("post-merge check: the written adapter lost or renamed layers", path=dest)
    for d in back.iter_deltas():
        digest, scale = digests[d.name]
        if factor_digest(d.down, d.up) != digest or abs(d.scale - scale) > 1e-6 * abs(scale):
            raise FormatError(
                f"post-merge check: layer {d.name} reads back different from what was computed", path=dest
            )
    return True
