"""`compress`: rewrite an adapter so that each layer's ΔW is its best rank-k approximation.

Contract:
* Layer ℓ of the output has ΔW′ = the rank-kℓ truncated SVD of scale·up@down (Eckart–Young: the
  best rank-k approximation in Frobenius and spectral norm), computed from the layer's r×r spectral
  core (spectral.Core.truncate: two thin products) without forming ΔW; where the kept spectrum is
  not separated enough for the Gram route, CholeskyQR2 or Householder QR (spectral.truncated_svd).
  Each layer keeps its effective scale s: up′ = U_k·S_k/s, down′ = V_kᵀ (split="up", the kohya /
  PEFT-conversion convention) or √S/√S (split="sqrt"), so a writer that stores alpha = s·k (or
  s·√k with rsLoRA) reproduces ΔW′ exactly.  Layers whose rank does not change keep their factors
  bit for bit.
* Factors are rounded once to the output dtype (default: each layer's input dtype; bf16 stays
  bf16).  For 16-bit outputs the two thin products run in float32 (spectral.py: their error is far
  below the 16-bit rounding); the Grams and the core are float64 in every case.
* `compress_file(src, dest, mode)`: modes whose rank depends on the layer's own spectrum (rank,
  energy, kohya's sv_*) take ONE pass: per layer, in the worker threads, read → core → rank →
  truncate → round, and the writer receives the layers in order as they are computed.  Modes that
  need every spectrum first (budget_*, from_audit) take the audit's pass keeping each layer's core
  (O(r²) floats per layer), plan, then read each layer again and truncate it with its kept core:
  the Grams and eigensolves are never recomputed.  A `CompressReport` gives kept energy and relative
  Frobenius error per layer and overall.

Not handled: DoRA magnitude vectors and lora_bias are copied unchanged (PEFT output only; the DoRA
output then differs from the original by more than the truncation; a note says so); LoHa/LoKr
layers (every writer holds plain LoRA / LoCon layers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audit import AuditOptions, audit_adapter
from ..convert import retarget
from ..errors import InvalidArgumentError
from ..formats import check_dest, check_writable, load, output_path, save
from ..parallel import ordered_map
from ..passes import spectral_pass
from ..spectral import Core, truncated_factors
from ..types import DTYPES, Adapter, LayerInfo, LoraDelta, frozen_mapping, round_to_dtype
from .plan import LOCAL_MODES, CompressReport, LayerResult, RankMode, layer_rank, layer_result, plan_ranks

_WORK = {"fp16": np.float32, "bf16": np.float32, "fp32": np.float64, "fp64": np.float64}


def _out_info(info: LayerInfo, k: int, dtype: str) -> LayerInfo:
    """The output LayerInfo of a layer truncated to k (or kept, k = r) and stored as `dtype`."""
    if k == info.rank:
        return info if dtype == info.dtype else replace(info, dtype=dtype)
    extras = frozen_mapping({**info.extras, "compressed_from": info.rank})
    return replace(info, rank=k, dtype=dtype, extras=extras)


def truncate_layer(delta: LoraDelta, k: int, split: str, dtype: str, core: Core | None = None) -> LoraDelta:
    """One layer truncated to rank k and rounded to `dtype` (k = r: the factors, only re-typed)."""
    info = delta.info
    out = _out_info(info, k, dtype)
    if k == info.rank:
        if dtype == info.dtype:
            return delta
        return _checked(LoraDelta(out, round_to_dtype(delta.down, dtype), round_to_dtype(delta.up, dtype)))
    # ΔW′ = s · up′ @ down′ keeps the layer's scale s: the factors carry ΔW_k / s
    divide = info.scale if info.scale != 0 else 1.0
    down, up = truncated_factors(delta.down, delta.up, info.scale, k, split, divide, core, work=_WORK[dtype])
    if down.shape[0] < k:  # r > min(out, in): fewer than k singular values exist; pad with zeros
        down = np.vstack([down, np.zeros((k - down.shape[0], down.shape[1]), down.dtype)])
        up = np.hstack([up, np.zeros((up.shape[0], k - up.shape[1]), up.dtype)])
    return _checked(LoraDelta(out, round_to_dtype(down, dtype), round_to_dtype(up, dtype)))


def _checked(delta: LoraDelta) -> LoraDelta:
    """fp16 tops out at 65504: refuse factors that overflowed instead of writing inf."""
    if delta.info.dtype == "fp16" and not (np.isfinite(delta.down).all() and np.isfinite(delta.up).all()):
        raise InvalidArgumentError(
            f"layer {delta.name}: factors overflow fp16; use --split sqrt or --dtype fp32/bf16"
        )
    return delta


def _check_args(adapter: Adapter, plan: Mapping[str, int], split: str, dtype: str | None) -> None:
    if split not in ("up", "sqrt"):
        raise InvalidArgumentError(f"split must be 'up' or 'sqrt', got {split!r}")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    unknown = [name for name in plan if name not in adapter._index]
    if unknown:
        raise InvalidArgumentError(f"plan names layers the adapter does not have: {sorted(unknown)[:5]}")
    for info in adapter.layers:
        k = int(plan.get(info.name, info.rank))
        if not 1 <= k <= info.rank:
            raise InvalidArgumentError(f"layer {info.name}: rank {k} is outside [1, {info.rank}]")


def compress_adapter(
    adapter: Adapter, plan: Mapping[str, int], *, split: str = "up", dtype: str | None = None
) -> Adapter:
    """Truncate every layer named in `plan` to its rank (layers not in `plan` are kept as they are);
    an in-memory adapter, every layer computed now (in parallel).  `compress_file` streams instead."""
    _check_args(adapter, plan, split, dtype)

    def one(delta: LoraDelta, core: Core) -> LoraDelta:
        info = delta.info
        return truncate_layer(delta, int(plan.get(info.name, info.rank)), split, dtype or info.dtype, core)

    return _assemble(adapter, list(spectral_pass(adapter, one, vectors=True)))


def compressed_lazy(
    adapter: Adapter,
    plan: Mapping[str, int],
    *,
    split: str = "up",
    dtype: str | None = None,
    cores: Mapping[str, Core] | None = None,
) -> Adapter:
    """`compress_adapter` as a lazy adapter whose output LayerInfos are known from `plan` up front:
    `loader` truncates one layer when asked; `iter_deltas` reads and truncates the layers on the
    worker threads, in order.  `cores`: kept spectral cores (with vectors) by layer name."""
    _check_args(adapter, plan, split, dtype)
    source = {info.name: info for info in adapter.layers}
    layers = tuple(
        _out_info(info, int(plan.get(info.name, info.rank)), dtype or info.dtype) for info in adapter.layers
    )

    def load_layer(out: LayerInfo) -> LoraDelta:
        delta = adapter.loader(source[out.name])
        core = cores.get(out.name) if cores else None
        return truncate_layer(delta, out.rank, split, out.dtype, core)

    return replace(adapter, layers=layers, loader=load_layer, stream=lambda: ordered_map(load_layer, layers))


def _assemble(adapter: Adapter, deltas: list[LoraDelta]) -> Adapter:
    return Adapter.from_deltas(
        deltas,
        format=adapter.format,
        config=adapter.config,
        metadata=adapter.metadata,
        modules_to_save=adapter.modules_to_save,
        notes=adapter.notes,
    )


# --- the whole pipeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressOptions:
    split: str = "up"  # where S goes: "up" (default) or "sqrt"
    dtype: str | None = None  # output dtype; None keeps each layer's input dtype
    dry_run: bool = False  # plan and report only, write nothing
    audit_threshold: float = 0.90  # τ behind --from-audit suggestions (their rounding: mode.rule)
    to: str | None = None  # output format; None: the input's (another one: compress and convert at once)
    component: str | None = None  # as convert's --component, with `to`


def compress_file(
    source: str | Path | Adapter,
    dest: str | Path | None,
    mode: RankMode,
    options: CompressOptions | None = None,
    **load_options: Any,
) -> CompressReport:
    """Load `source`, plan ranks with `mode`, truncate, write to `dest` in the input's format (or
    `options.to`: the layers are renamed for that format as `convert` does, in the same pass)."""
    options = options or CompressOptions()
    original = source if isinstance(source, Adapter) else load(source, **load_options)
    if dest is None and not options.dry_run:
        raise InvalidArgumentError("compress needs an output path (-o DIR) unless --dry-run")
    fmt = options.to or original.format
    if dest is not None:
        dest = check_dest(output_path(fmt, dest), [original.path])
    adapter = original
    if fmt != original.format or options.component is not None:
        adapter = retarget(original, fmt, options.component)  # checks that `fmt` can hold it
    elif not options.dry_run:
        check_writable(adapter, fmt)  # refuse now, not after the work
    if mode.kind == "budget_bytes" and mode.dtype is None and options.dtype is not None:
        mode = replace(mode, dtype=options.dtype)
    _check_args(adapter, {}, options.split, options.dtype)
    if mode.kind in LOCAL_MODES:
        results, small = _one_pass(adapter, mode, options)
    else:
        results, small = _two_passes(adapter, mode, options)
    if small is not None and dest is not None:
        save(small, dest, format=fmt, source=original)  # layers computed as they are written
    notes = list(adapter.notes)
    if any(layer.dora for layer in adapter.layers):
        notes.append(
            "DoRA magnitude vectors are copied unchanged: outputs differ by more than the truncation"
        )
    out = None if options.dry_run or dest is None else str(dest)
    return CompressReport(adapter.path, out, mode, tuple(results), tuple(notes))


def _one_pass(adapter: Adapter, mode: RankMode, options: CompressOptions) -> tuple[list, Adapter | None]:
    """LOCAL_MODES: a streamed adapter whose layers are read, planned and truncated in the workers;
    `results` fills in as the stream is consumed (dry run: at once, and no adapter)."""

    def planned(delta: LoraDelta, core: Core) -> LayerResult:
        info, sigma = delta.info, core.sigma  # (r,)
        return layer_result(info, sigma, layer_rank(sigma, info, mode), options.dtype)

    if options.dry_run:
        return list(spectral_pass(adapter, planned)), None

    def truncated(delta: LoraDelta, core: Core) -> tuple[LayerResult, LoraDelta]:
        result = planned(delta, core)
        dtype = options.dtype or delta.info.dtype
        return result, truncate_layer(delta, result.new_rank, options.split, dtype, core)

    results: list[LayerResult] = []

    def stream() -> Iterator[LoraDelta]:
        for result, delta in spectral_pass(adapter, truncated, vectors=True):
            results.append(result)
            yield delta

    return results, replace(adapter, stream=stream)


def _two_passes(adapter: Adapter, mode: RankMode, options: CompressOptions) -> tuple[list, Adapter | None]:
    """Modes that need every spectrum: the audit's pass keeps the cores, then a truncating pass."""
    audit_opts = AuditOptions(
        thresholds=(options.audit_threshold,),
        rounding=mode.rule,
        keep_cores=not options.dry_run,
    )
    report = audit_adapter(adapter, audit_opts)
    plan = plan_ranks(report, mode)
    results = [layer_result(x.info, x.sigma, plan[x.name], options.dtype) for x in report.layers]
    if options.dry_run:
        return results, None
    cores = {x.name: x.core for x in report.layers if x.core is not None}
    return results, compressed_lazy(adapter, plan, split=options.split, dtype=options.dtype, cores=cores)
