"""Merge methods: pure functions over numpy arrays, listed in one explicit registry (`METHODS`).

Inputs are n ≥ 1 updates of one layer and weights w_i (finite, one per update).  No file I/O and no
lorascope formats here; the caller reads adapters, calls `get_method(name).fn`, and writes.

Factor methods (kind "factor") take `factors` = [(down_i (r_i, in), up_i (out, r_i), scale_i)],
ΔW_i = scale_i·up_i@down_i, never form ΔW, and return (down (k, in), up (out, k)) in float64:
* `linear`: exact Σ w_i ΔW_i by concatenation: down = [down_1; …; down_n], up = [w_1 s_1 up_1, …];
  k = Σ r_i, no cross terms, nothing truncated.
* `svd`: the same sum, its exact thin SVD from the stacked factors (`stacked_svd`), truncated
  to `rank` (default max r_i) or to the smallest k keeping `energy` of Σσ² (both: the smaller k);
  S goes into up (`LowRankSVD.factors("up")`).

Dense methods (kind "dense") take `deltas` = [ΔW_i (out, in) float64, already scaled] and return the
merged (out, in) float64; every dense method takes `overwrite` (default False): True lets it use the
deltas' buffers as scratch, which the merge pass does with the ΔW_i it formed itself (fewer passes
over memory, no extra (out, in) buffers).  `density` = 1 − trim fraction = 1 − DARE drop rate, in (0, 1].
* trim (TIES step 1): per ΔW_i keep the round(density·size) entries of largest |value| (ties at
  the threshold: the first in C order), zero the rest.
* DARE (Yu et al. 2023): keep each entry iff `rng.random(shape, dtype=float32) < density`, one draw
  per ΔW_i in input order (so a seeded Generator reproduces a merge), and divide kept ones by density.
* elect (TIES step 2, Yadav et al. 2023): v_i = w_i·t_i; sign of Σ v_i (majority="total") or of
  Σ sign(v_i) ("frequency"); a zero sum elects + (as PEFT and mergekit do).
* disjoint merge (TIES step 3): Σ v_i over the i whose v_i is non-zero with the elected sign;
  normalize=True divides by Σ|w_i| over those same i (no contributor → 0).
`ties` = trim+elect+merge; `dare_ties` = DARE+elect+merge; `dare_linear` = Σ w_i·DARE(ΔW_i);
`magnitude_prune` = Σ w_i·trim(ΔW_i).  Non-finite entries in ΔW are not checked (they propagate).

Equivalents.  PEFT `add_weighted_adapter(combination_type=…)`: "cat" = our `linear` (PEFT puts
w·scale into A, we into up; same ΔW); PEFT "linear" merges A's and B's separately (√w each) and is
not Σ w_i ΔW_i (cross terms) unless the adapters share one subspace; "svd" = our `svd` (PEFT forms
ΔW and runs a dense SVD; default rank max r_i as here).  PEFT "ties"/"dare_ties"/"dare_linear"/
"magnitude_prune" apply the method to A and B separately; their "*_svd" variants apply it to ΔW like
ours (then re-factorise: `dense.dense_truncated_svd`).  PEFT elects signs on unweighted trimmed
tensors, divides by the contributor count and keeps int(density·size) entries: for equal weights w
its ties = w × ours (normalize=True).  mergekit's ties / dare_ties (consensus "sum" = our "total",
"count" = "frequency") divide by Σ w_i over contributors: equal to ours for positive weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ..errors import InvalidArgumentError
from ..metrics import Spectrum, energy_rank
from ..spectral import LowRankSVD, lora_svd

Factor = tuple[np.ndarray, np.ndarray, float]  # (down (r, in), up (out, r), scale)
KINDS = ("factor", "dense")
MAJORITY = ("total", "frequency")


@dataclass(frozen=True)
class MergeMethod:
    name: str
    kind: str  # "factor": works on LoRA factors, never forms ΔW; "dense": works on ΔW (out, in)
    fn: Callable
    params: tuple[str, ...]  # keyword parameters besides the arrays, weights and rng
    summary: str  # one line for --help / docs
    needs_rng: bool = False  # fn takes a required keyword `rng: np.random.Generator`


# ---- validation: one-line InvalidArgumentError for everything a caller can get wrong ----


def _check_weights(weights: Sequence[float], n: int) -> np.ndarray:
    if n < 1:
        raise InvalidArgumentError("merge needs at least one adapter")
    w = np.asarray(weights, dtype=np.float64)  # (n,)
    if w.shape != (n,):
        raise InvalidArgumentError(f"expected {n} weights (one per adapter), got {len(weights)}")
    if not np.all(np.isfinite(w)):
        raise InvalidArgumentError(f"weights must be finite, got {list(weights)}")
    return w


def _check_factors(factors: Sequence[Factor], weights: Sequence[float]) -> np.ndarray:
    w = _check_weights(weights, len(factors))
    for i, (d, u, s) in enumerate(factors):  # counted from 1 in messages, as users count
        if np.ndim(d) != 2 or np.ndim(u) != 2 or np.shape(d)[0] != np.shape(u)[1]:
            raise InvalidArgumentError(
                f"adapter {i + 1}: down {np.shape(d)} and up {np.shape(u)} ranks differ"
            )
        if not np.isfinite(s) or not (np.all(np.isfinite(d)) and np.all(np.isfinite(u))):
            raise InvalidArgumentError(f"adapter {i + 1}: factors or scale contain NaN or Inf")
    shapes = {(np.shape(u)[0], np.shape(d)[1]) for d, u, _ in factors}
    if len(shapes) > 1:
        raise InvalidArgumentError(f"adapters disagree on the layer shape (out, in): {sorted(shapes)}")
    return w


def _check_dense(deltas: Sequence[np.ndarray], weights: Sequence[float]) -> tuple[list, np.ndarray]:
    w = _check_weights(weights, len(deltas))
    shapes = {np.shape(x) for x in deltas}
    if len(shapes) > 1:
        raise InvalidArgumentError(f"deltas must all have one shape, got {sorted(shapes)}")
    # no copy for C-contiguous float64 (the documented input); the masks below index in C order
    return [np.ascontiguousarray(x, dtype=np.float64) for x in deltas], w


def _check_options(density: float, majority: str = "total") -> None:
    if not 0.0 < density <= 1.0:  # also rejects NaN
        raise InvalidArgumentError(f"density must be in (0, 1] (1 − drop rate), got {density}")
    if majority not in MAJORITY:
        raise InvalidArgumentError(f"majority must be one of {', '.join(MAJORITY)}, got {majority!r}")


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise InvalidArgumentError("DARE needs rng=np.random.Generator (e.g. np.random.default_rng(0))")


# ---- factor methods ----


def stacked_svd(pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> LowRankSVD:
    """Exact thin SVD of Σᵢ scaleᵢ·upᵢ@downᵢ by concatenating the scaled factors (rank Σ rᵢ)."""
    downs = np.concatenate([np.asarray(d, dtype=np.float64) for d, _, _ in pairs], axis=0)  # (Σr, n)
    ups = np.concatenate([np.asarray(u, dtype=np.float64) * s for _, u, s in pairs], axis=1)  # (m, Σr)
    return lora_svd(downs, ups, 1.0)


def linear(factors: Sequence[Factor], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Exact Σ w_i·scale_i·up_i@down_i by concatenating the factors (rank Σ r_i, nothing truncated)."""
    w = _check_factors(factors, weights)
    down = np.concatenate([np.asarray(d, dtype=np.float64) for d, _, _ in factors], axis=0)  # (Σr, in)
    ups = [np.asarray(u, dtype=np.float64) * (wi * s) for (_, u, s), wi in zip(factors, w, strict=True)]
    return down, np.concatenate(ups, axis=1)  # (Σr, in), (out, Σr)


def svd(
    factors: Sequence[Factor],
    weights: Sequence[float],
    *,
    rank: int | None = None,
    energy: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-k approximation of Σ w_i ΔW_i (exact SVD from the factors); k = rank (default
    max r_i) or the smallest k keeping `energy` of Σσ² (both: the smaller)."""
    w = _check_factors(factors, weights)
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1):
        raise InvalidArgumentError(f"rank must be an integer ≥ 1, got {rank!r}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise InvalidArgumentError(f"energy must be in (0, 1], got {energy}")
    full = stacked_svd([(d, u, wi * s) for (d, u, s), wi in zip(factors, w, strict=True)])  # rank ≤ Σ r_i
    if energy is None:
        k = rank if rank is not None else max(np.shape(d)[0] for d, _, _ in factors)
    else:
        k = max(1, energy_rank(Spectrum(full.s, full.s.size), energy))  # a zero sum keeps one zero
        k = k if rank is None else min(k, rank)
    return full.truncate(min(k, full.s.size)).factors("up")  # (k, in), (out, k)


# ---- dense methods ----


def _trim_mask(x: np.ndarray, density: float) -> np.ndarray:
    """Mask of the round(density·size) entries of x with largest |x|; ties: first in C order."""
    n = x.size
    k = int(np.floor(density * n + 0.5))
    if k >= n:
        return np.ones(x.shape, dtype=bool)
    if k == 0:
        return np.zeros(x.shape, dtype=bool)
    mag = np.abs(x)  # (out, in) scratch, C-contiguous
    flat = mag.reshape(-1)  # (size,) view
    flat.partition(n - k)  # in place: flat[n-k:] are the k largest
    threshold = flat[n - k]
    np.abs(x, out=mag)  # restore |x| in the same buffer: no second full-size temporary
    keep = mag > threshold  # (out, in) bool, fewer than k entries
    short = k - int(np.count_nonzero(keep))
    if short:
        keep.reshape(-1)[np.flatnonzero(mag == threshold)[:short]] = True
    return keep


def _dare_mask(x: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    # float32 uniforms: half the temporary of float64, resolution 2⁻²⁴ on the keep probability
    return rng.random(x.shape, dtype=np.float32) < density  # (out, in) bool


def _weighted(x: np.ndarray, c: float, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    np.multiply(x, c, out=out)  # (out, in)
    out *= mask
    return out


def _weighted_sum(
    xs: list, w: np.ndarray, masks: Iterable[np.ndarray], rescale: float, overwrite: bool
) -> np.ndarray:
    """Σ w_i·rescale·mask_i⊙x_i; `masks` may be a generator (one mask alive at a time); with
    `overwrite` each term is formed in x_i's own buffer instead of a scratch one."""
    out = np.zeros(xs[0].shape)  # (out, in)
    tmp = None if overwrite else np.empty(xs[0].shape)  # (out, in) scratch
    for x, wi, mask in zip(xs, w, masks, strict=True):
        out += _weighted(x, wi * rescale, mask, x if tmp is None else tmp)
    return out


_BLOCK = 1 << 16  # entries per row block of the disjoint merge: its ~8 buffers stay in the core's cache


def _disjoint_merge(
    xs: list, w: np.ndarray, masks: list, rescale: float, majority: str, normalize: bool, overwrite: bool
) -> np.ndarray:
    """TIES steps 2-3 on v_i = w_i·rescale·mask_i⊙x_i, one block of rows at a time (every step is
    elementwise, so the blocks are independent and each one's passes run in cache instead of
    going to memory ~15 times per layer)."""
    shape = xs[0].shape
    out = np.empty(shape)  # (out, in)
    rows = max(1, _BLOCK // max(1, shape[1]))
    for top in range(0, shape[0], rows):
        sl = slice(top, top + rows)
        part = [x[sl] for x in xs]
        _disjoint_block(part, w, [m[sl] for m in masks], rescale, (majority, normalize, overwrite), out[sl])
    return out


def _disjoint_block(
    xs: list, w: np.ndarray, masks: list, rescale: float, how: tuple, out: np.ndarray
) -> None:
    """One row block of `_disjoint_merge` into `out`.  v_i is built once in x_i's own buffer when
    `overwrite` (the caller's deltas are scratch), else recomputed per pass into one scratch buffer.
    With s = ±1 the elected sign, v_i agrees where s·v_i > 0, and the merge is s·Σ max(s·v_i, 0)."""
    majority, normalize, overwrite = how
    tmp = np.empty(xs[0].shape)  # (rows, in) scratch
    if overwrite:
        for x, wi, mask in zip(xs, w, masks, strict=True):
            _weighted(x, wi * rescale, mask, x)

    def values() -> Iterable[np.ndarray]:
        if overwrite:
            yield from xs
        else:
            for x, wi, mask in zip(xs, w, masks, strict=True):
                yield _weighted(x, wi * rescale, mask, tmp)

    elect = out  # (rows, in) Σ v_i or Σ sign(v_i), then the output
    elect.fill(0.0)
    for v in values():
        elect += np.sign(v, out=tmp) if majority == "frequency" else v
    # the elected sign, a zero sum elects +: a sum that starts at +0.0 is never -0.0, so copysign
    # gives what `where(elect >= 0, 1, -1)` gives, without its per-entry branch
    sign = np.copysign(1.0, elect)  # (rows, in)
    out.fill(0.0)  # Σ of the agreeing magnitudes
    norm = np.zeros(xs[0].shape) if normalize else None  # (rows, in) Σ|w_i| over contributors
    for v, wi in zip(values(), w, strict=True):
        agreeing = np.multiply(v, sign, out=tmp)  # > 0 exactly where v is non-zero with the elected sign
        np.maximum(agreeing, 0.0, out=agreeing)
        out += agreeing
        if norm is not None:  # sign(agreeing) is 1 where v_i contributes, else 0
            contributes = np.sign(agreeing, out=agreeing)
            norm += contributes if abs(wi) == 1.0 else np.multiply(contributes, abs(wi), out=contributes)
    out *= sign
    if norm is not None:  # no contributor: out is ±0 there, and ±0 / tiny keeps it
        np.maximum(norm, np.finfo(np.float64).tiny, out=norm)
        out /= norm


def ties(
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    density: float = 0.8,
    majority: str = "total",
    normalize: bool = True,
    overwrite: bool = False,
) -> np.ndarray:
    """TIES-merging (Yadav et al. 2023): magnitude trim, sign election, disjoint merge.
    `overwrite`: the deltas (float64, C-contiguous) may be used as scratch (as scipy's overwrite_a)."""
    xs, w = _check_dense(deltas, weights)
    _check_options(density, majority)
    masks = [_trim_mask(x, density) for x in xs]  # bool: 1/8 of the float64 deltas
    return _disjoint_merge(xs, w, masks, 1.0, majority, normalize, overwrite)


def dare_ties(
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    rng: np.random.Generator,
    density: float = 0.8,
    majority: str = "total",
    normalize: bool = True,
    overwrite: bool = False,
) -> np.ndarray:
    """DARE random drop with 1/density rescale (Yu et al. 2023), then TIES sign election and merge.
    `overwrite`: as for `ties`."""
    xs, w = _check_dense(deltas, weights)
    _check_options(density, majority)
    _check_rng(rng)
    masks = [_dare_mask(x, density, rng) for x in xs]
    return _disjoint_merge(xs, w, masks, 1.0 / density, majority, normalize, overwrite)


def dare_linear(
    deltas: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    rng: np.random.Generator,
    density: float = 0.8,
    overwrite: bool = False,
) -> np.ndarray:
    """DARE random drop with 1/density rescale, then the weighted sum Σ w_i·t_i.
    `overwrite`: as for `ties`."""
    xs, w = _check_dense(deltas, weights)
    _check_options(density)
    _check_rng(rng)
    masks = (_dare_mask(x, density, rng) for x in xs)
    return _weighted_sum(xs, w, masks, 1.0 / density, overwrite)


def magnitude_prune(
    deltas: Sequence[np.ndarray], weights: Sequence[float], *, density: float = 0.8, overwrite: bool = False
) -> np.ndarray:
    """TIES magnitude trim of each ΔW_i, then the weighted sum Σ w_i·trim(ΔW_i).
    `overwrite`: as for `ties`."""
    xs, w = _check_dense(deltas, weights)
    _check_options(density)
    masks = (_trim_mask(x, density) for x in xs)
    return _weighted_sum(xs, w, masks, 1.0, overwrite)


# ---- registry ----


def register(methods: Iterable[MergeMethod]) -> Mapping[str, MergeMethod]:
    """Read-only name → method table; rejects duplicate names, unknown kinds and params that are
    not keyword parameters of fn (so a method's signature stays its schema)."""
    table: dict[str, MergeMethod] = {}
    for m in methods:
        if m.name in table:
            raise ValueError(f"duplicate merge method {m.name!r}")
        if m.kind not in KINDS:
            raise ValueError(f"merge method {m.name!r}: kind must be one of {KINDS}, got {m.kind!r}")
        sig = inspect.signature(m.fn).parameters
        needs = (
            *m.params,
            *(("rng",) if m.needs_rng else ()),
            *(("overwrite",) if m.kind == "dense" else ()),
        )
        missing = [p for p in needs if p not in sig]
        if missing:
            raise ValueError(f"merge method {m.name!r}: fn has no parameter {', '.join(missing)}")
        table[m.name] = m
    return MappingProxyType(table)


METHODS: Mapping[str, MergeMethod] = register(
    [
        MergeMethod("linear", "factor", linear, (), "exact weighted sum by concatenation (rank Σ r_i)"),
        MergeMethod("svd", "factor", svd, ("rank", "energy"), "weighted sum truncated by exact SVD"),
        MergeMethod(
            "ties", "dense", ties, ("density", "majority", "normalize"), "TIES: trim, elect sign, merge"
        ),
        MergeMethod(
            "dare_ties",
            "dense",
            dare_ties,
            ("density", "majority", "normalize"),
            "DARE random drop + rescale, then TIES sign election and merge",
            needs_rng=True,
        ),
        MergeMethod(
            "dare_linear",
            "dense",
            dare_linear,
            ("density",),
            "DARE random drop + rescale, then weighted sum",
            needs_rng=True,
        ),
        MergeMethod(
            "magnitude_prune", "dense", magnitude_prune, ("density",), "magnitude trim, then weighted sum"
        ),
    ]
)


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; InvalidArgumentError listing the known names if none."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise InvalidArgumentError(f"unknown merge method {name!r}; choose one of {known}") from None
