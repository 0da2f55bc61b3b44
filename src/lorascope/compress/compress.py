"""`compress`: rewrite an adapter so that each layer's ΔW is its best rank-k approximation.

Contract:
* `compress(adapter, plan)` → an in-memory `Adapter` whose layer ℓ has ΔW′ = the rank-kℓ truncated
  SVD of scale·up@down (Eckart–Young: the best rank-k approximation in Frobenius and spectral norm),
  computed from the factors in float64 without forming ΔW (`truncated_svd`): from the r×r Gram
  matrices when the kept spectrum is well separated, else CholeskyQR2, else Householder QR
  (`spectral.lora_svd`); all three agree to ~1e-15 on the test matrices.
  Each layer keeps its effective scale s: we store up′ = U_k·S_k/s, down′ = V_kᵀ (split="up", the
  kohya / PEFT-conversion convention) or √S/√S (split="sqrt"), so a writer that writes
  alpha = s·k (or s·√k with rsLoRA) reproduces ΔW′ exactly.  Layers whose rank does not change
  keep their original factors bit for bit.
* Factors are rounded to the output dtype (default: each layer's input dtype; bf16 stays bf16).
* `compress_file(src, dest, mode)` = load → audit → plan_ranks → compress → write, plus a
  `CompressReport` (kept energy and relative Frobenius error per layer and overall).

Not handled: DoRA magnitude vectors and lora_bias are copied unchanged (PEFT output only; the DoRA
output then differs from the original by more than the truncation; a note says so); LoHa/LoKr
layers (every writer holds plain LoRA / LoCon layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..audit import AuditOptions, audit_adapter
from ..audit.audit import nonfinite_error
from ..audit.suggest import Rounding
from ..errors import InvalidArgumentError
from ..formats import check_dest, check_writable, load, output_path, save
from ..spectral import LowRankSVD, gram_separated, gram_singular_values, lora_svd
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from .plan import (
    LOCAL_MODES,
    CompressReport,
    LayerResult,  # noqa: F401  (re-exported: part of the compress API)
    RankMode,
    layer_rank,
    layer_results,
    plan_ranks,
)

DTYPES = ("fp16", "bf16", "fp32", "fp64")


def round_to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float64 factors to the storage dtype; bf16 is kept as float32 holding bf16 values."""
    if dtype == "bf16":
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        # round to nearest even on the low 16 bits, then clear them
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore"):  # an fp16 overflow becomes inf and is reported by _checked
        return np.asarray(x, dtype={"fp16": np.float16, "fp32": np.float32, "fp64": np.float64}[dtype])


# CholeskyQR2 is accepted when the factor's condition number, estimated from the Cholesky diagonal,
# is below this; it is then as accurate as Householder QR (orthogonality O(ε) for κ ≲ ε^-½ ≈ 1e8,
# Yamamoto et al. 2015).  Otherwise, or for rank-deficient factors, the Householder route is used.
_CHOLQR_MAX_COND = 1e6


def _cholqr2_t(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For x (r, n) with r ≤ n: (Qᵀ (r, n) with orthonormal rows, R (r, r)) with xᵀ = Q R, or None.

    Two passes of Cholesky-QR on the Gram matrix: BLAS-3 only, ~5× faster than numpy's Householder
    QR with Q formed for (14336, 64) factors."""
    try:
        r1 = np.linalg.cholesky(x @ x.T).T  # (r, r) upper, xᵀ = Q1 R1
    except np.linalg.LinAlgError:
        return None
    d = np.abs(np.diag(r1))
    if d.min() <= d.max() / _CHOLQR_MAX_COND:
        return None
    q1t = np.linalg.inv(r1.T) @ x  # (r, n) = R1^-ᵀ x; inv of an (r, r) + GEMM beats solve here
    r2 = np.linalg.cholesky(q1t @ q1t.T).T  # (r, r), ≈ I
    return np.linalg.inv(r2.T) @ q1t, r2 @ r1  # (r, n), (r, r)


def _gram_truncated(a: np.ndarray, b: np.ndarray, scale: float, k: int, grams=None) -> LowRankSVD | None:
    """Rank-k SVD of scale·b@a from the r×r Gram matrices only (no QR), or None when not accurate.

    With G_A = A Aᵀ = U Λ Uᵀ and H = Λ^½ Uᵀ G_B U Λ^½ = W Σ² Wᵀ (spectral.gram_singular_values),
    L = U Λ^½ W_k (r, k) gives  U_k Σ_k = B L  and  V_kᵀ = Σ_k⁻² Lᵀ G_B A:  two thin GEMMs per layer."""
    ga, gb = grams if grams is not None else (a @ a.T, b.T @ b)  # (r, r), (r, r)
    lam, u = np.linalg.eigh(ga)  # (r,), (r, r)
    root = np.sqrt(np.clip(lam, 0.0, None))  # (r,)
    h = root[:, None] * (u.T @ gb @ u) * root[None, :]  # (r, r)
    s2, w = np.linalg.eigh(0.5 * (h + h.T))  # ascending
    s2, w = s2[::-1], w[:, ::-1]
    if not gram_separated(s2, k):  # else σ_k ≈ σ_k+1 or tiny: let the QR route pick the subspace
        return None
    sig = np.sqrt(s2[:k])  # (k,) singular values of b@a
    lk = u @ (root[:, None] * w[:, :k])  # (r, k)
    us = b @ lk  # (m, k) = U_k Σ_k
    vt = (lk.T @ gb @ a) / s2[:k, None]  # (k, n) = V_kᵀ
    uk = us / sig[None, :]
    return LowRankSVD(-uk if scale < 0 else uk, sig * abs(scale), vt)


def truncated_svd(down: np.ndarray, up: np.ndarray, scale: float, k: int, grams=None) -> LowRankSVD:
    """Rank-k truncated SVD of scale·up@down (float64), the same as
    `spectral.lora_svd(down, up, scale).truncate(k)`: through the Gram matrices when the kept
    spectrum is well separated (the common case), else CholeskyQR2 when the factors are well
    conditioned, else `lora_svd` (Householder QR).  `grams` = (A Aᵀ, BᵀB) if already computed."""
    a = np.asarray(down, dtype=np.float64)  # (r, n)
    b = np.asarray(up, dtype=np.float64)  # (m, r)
    fast = _gram_truncated(a, b, scale, k, grams)
    if fast is not None:
        return fast
    r = a.shape[0]
    fa = _cholqr2_t(a) if r <= a.shape[1] else None
    fb = _cholqr2_t(b.T) if fa is not None and r <= b.shape[0] else None
    if fa is None or fb is None:
        return lora_svd(down, up, scale).truncate(k)
    (qat, ra), (qbt, rb) = fa, fb  # Aᵀ = Q_a R_a, B = Q_b R_b
    uc, s, vct = np.linalg.svd(rb @ ra.T)  # (r, r), (r,), (r, r)
    u = qbt.T @ uc[:, :k]  # (m, k)
    vt = vct[:k] @ qat  # (k, n)
    if scale < 0:
        u = -u
    return LowRankSVD(u, s[:k] * abs(scale), vt)


def _truncate(delta: LoraDelta, k: int, split: str, dtype: str) -> LoraDelta:
    info = delta.info
    svd = truncated_svd(delta.down, delta.up, info.scale, k)  # u (out, k), s (k,), vt (k, in)
    down, up = svd.factors(split)  # (k, in), (out, k) with scale·B·A = up @ down
    if down.shape[0] < k:  # r > min(out, in): fewer than k singular values exist; pad with zeros
        down = np.vstack([down, np.zeros((k - down.shape[0], down.shape[1]))])
        up = np.hstack([up, np.zeros((up.shape[0], k - up.shape[1]))])
    up = up / info.scale if info.scale != 0 else up  # keep the layer's scale: ΔW′ = s · up′ @ down′
    new_info = replace(
        info, rank=k, dtype=dtype, extras=frozen_mapping({**info.extras, "compressed_from": info.rank})
    )
    return _checked(LoraDelta(new_info, round_to_dtype(down, dtype), round_to_dtype(up, dtype)))


def compress_adapter(
    adapter: Adapter, plan: Mapping[str, int], *, split: str = "up", dtype: str | None = None
) -> Adapter:
    """Truncate every layer named in `plan` to its rank (layers not in `plan` are kept as they are).

    Returns an in-memory adapter (every layer computed now); `compress_file` uses the lazy
    `compressed_lazy` instead, so that only a layer or two is alive while writing."""
    lazy = compressed_lazy(adapter, plan, split=split, dtype=dtype)
    return _assemble(adapter, list(lazy.iter_deltas()))


def compressed_lazy(
    adapter: Adapter, plan: Mapping[str, int], *, split: str = "up", dtype: str | None = None
) -> Adapter:
    """`compress` as a lazy adapter: the output LayerInfo of every layer is known from `plan` up
    front; a layer's factors are read and truncated when the loader is asked for it (each time)."""
    if split not in ("up", "sqrt"):
        raise InvalidArgumentError(f"split must be 'up' or 'sqrt', got {split!r}")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    unknown = set(plan) - set(adapter.names)
    if unknown:
        raise InvalidArgumentError(f"plan names layers the adapter does not have: {sorted(unknown)[:5]}")
    source: dict[str, LayerInfo] = {}
    layers = []
    for info in adapter.layers:
        k = int(plan.get(info.name, info.rank))
        out_dtype = dtype or info.dtype
        if not 1 <= k <= info.rank:
            raise InvalidArgumentError(f"layer {info.name}: rank {k} is outside [1, {info.rank}]")
        if k == info.rank:  # the same LayerInfo `_same_rank` gives its delta
            out = info if out_dtype == info.dtype else replace(info, dtype=out_dtype)
        else:  # the same LayerInfo `_truncate` gives its delta
            extras = frozen_mapping({**info.extras, "compressed_from": info.rank})
            out = replace(info, rank=k, dtype=out_dtype, extras=extras)
        source[info.name] = info
        layers.append(out)

    def load_layer(out: LayerInfo) -> LoraDelta:
        info = source[out.name]
        delta = adapter.loader(info)
        if out.rank == info.rank:
            return _same_rank(delta, out.dtype)
        return _truncate(delta, out.rank, split, out.dtype)

    return replace(adapter, format=adapter.format, layers=tuple(layers), loader=load_layer)


def _same_rank(delta: LoraDelta, dtype: str) -> LoraDelta:
    if dtype == delta.info.dtype:
        return delta
    info = replace(delta.info, dtype=dtype)
    return _checked(LoraDelta(info, round_to_dtype(delta.down, dtype), round_to_dtype(delta.up, dtype)))


def _checked(delta: LoraDelta) -> LoraDelta:
    """fp16 tops out at 65504: refuse factors that overflowed instead of writing inf (Gradience B26)."""
    if delta.info.dtype == "fp16" and not (np.isfinite(delta.down).all() and np.isfinite(delta.up).all()):
        raise InvalidArgumentError(
            f"layer {delta.name}: factors overflow fp16; use --split sqrt or --dtype fp32/bf16"
        )
    return delta


def _assemble(adapter: Adapter, deltas: list[LoraDelta]) -> Adapter:
    return Adapter.from_deltas(
        deltas,
        format=adapter.format,
        config=adapter.config,
        metadata=adapter.metadata,
        modules_to_save=adapter.modules_to_save,
        notes=adapter.notes,
    )


@dataclass(frozen=True)
class _Spectrum:
    """What `layer_results` reads of an audit LayerReport, plus the rank chosen in the pass."""

    info: LayerInfo
    sigma: np.ndarray  # (r,) of the scaled ΔW
    new_rank: int


def _spectra(adapter: Adapter, mode: RankMode):
    """LOCAL_MODES, pass 1: each layer's spectrum from its two Gram matrices (as in audit) and the
    rank `mode` gives it; no factors are kept.  Pass 2 (`compressed_lazy`, while writing) reads
    each layer again and truncates it: reading twice costs ~0.3 s on a 7B-shaped r=64 adapter and
    keeps memory at a layer or two instead of the whole compressed adapter."""
    spectra = []
    for delta in adapter.iter_deltas():
        info = delta.info
        a = np.asarray(delta.down, dtype=np.float64)  # (r, in)
        b = np.asarray(delta.up, dtype=np.float64)  # (out, r)
        ga, gb = a @ a.T, b.T @ b  # (r, r), (r, r)
        for which, g in (("down", ga), ("up", gb)):
            if not np.isfinite(np.trace(g)):
                raise nonfinite_error(info, which, adapter.path)
        sigma = gram_singular_values(ga, gb, info.scale)  # (r,)
        spectra.append(_Spectrum(info, sigma, layer_rank(sigma, info, mode)))
    return SimpleNamespace(layers=tuple(spectra))


# --- the whole pipeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressOptions:
    split: str = "up"  # where S goes: "up" (default) or "sqrt"
    dtype: str | None = None  # output dtype; None keeps each layer's input dtype
    dry_run: bool = False  # plan and report only, write nothing
    audit_threshold: float = 0.90  # τ behind --from-audit suggestions
    audit_rounding: str = "multiple:4"  # rounding behind --from-audit suggestions


def compress_file(
    source: str | Path | Adapter,
    dest: str | Path | None,
    mode: RankMode,
    options: CompressOptions | None = None,
    **load_options: Any,
) -> CompressReport:
    """Load `source`, plan ranks with `mode`, truncate, write to `dest` in the input's format."""
    options = options or CompressOptions()
    adapter = source if isinstance(source, Adapter) else load(source, **load_options)
    if dest is None and not options.dry_run:
        raise InvalidArgumentError("compress needs an output path (-o DIR) unless --dry-run")
    if dest is not None:
        dest = check_dest(output_path(adapter.format, dest), [adapter.path])
    if not options.dry_run:
        check_writable(adapter, adapter.format)  # refuse now, not after the audit
    if mode.kind == "budget_bytes" and mode.dtype is None and options.dtype is not None:
        mode = replace(mode, dtype=options.dtype)
    if mode.kind in LOCAL_MODES:  # each layer's rank from its own spectrum: no audit needed
        report = _spectra(adapter, mode)
        plan = {x.info.name: x.new_rank for x in report.layers}
    else:  # the plan needs every spectrum first: audit, then a second pass
        audit_opts = AuditOptions(
            thresholds=(options.audit_threshold,), rounding=Rounding.parse(options.audit_rounding)
        )
        report = audit_adapter(adapter, audit_opts)
        plan = plan_ranks(report, mode)
    notes = list(adapter.notes)
    if any(layer.dora for layer in adapter.layers):
        notes.append(
            "DoRA magnitude vectors are copied unchanged: outputs differ by more than the truncation"
        )
    if not options.dry_run:
        small = compressed_lazy(adapter, plan, split=options.split, dtype=options.dtype)
        save(small, dest, format=adapter.format, source=adapter)  # layers truncated as they are written
    out = None if options.dry_run or dest is None else str(dest)
    return CompressReport(adapter.path, out, mode, layer_results(report, plan, options.dtype), tuple(notes))
