"""verify-merge's tolerances and diagnosis: pure functions of exact per-layer quantities.

Notation for one targeted layer: D = MERGED − BASE (dense, float64), X = s·B·A (the adapter's ΔW,
from its factors), M = MERGED.  Rounding model of a merge (what PEFT's merge_and_unload does, and
any tool that adds s·B·A to the base and stores the sum): the product is rounded once, the sum once
in the compute dtype, and the result once more when stored in another dtype; a BASE file coarser
than MERGED may itself be a rounding of the weights the merge started from.  With u the unit
roundoff (fp32 2⁻²⁴, fp16 2⁻¹¹, bf16 2⁻⁸, fp64 2⁻⁵³) every entry of the error E = D − X obeys

    |E_ij| ≤ a·|X_ij| + b·|M_ij|,   a = max(u_base, u_merged),
                                     b = u_base·(1 + [u_base > u_merged]) + u_merged·[dtypes differ]

(second-order terms are covered by the 1 % slack below).  Hence, in Frobenius norm,

    rel = ‖D − X‖/‖X‖ ≤ tol = (a‖X‖ + b‖M‖)/‖X‖          (deterministic)

The strength k̂ = ⟨D, X⟩/‖X‖² is X's share of D.  Its error ⟨E, X⟩/‖X‖² is a sum of independent,
zero-mean rounding errors (round to nearest), so by Hoeffding's inequality it exceeds
z·√(Σ e_ij² X_ij²)/‖X‖² ≤ z·(a·max|X| + b·max|M|)/‖X‖ =: k_res with probability ≤ 2·exp(−z²/2)
(z = 6: 3e-8 per layer).  A merge is verified when rel ≤ tol AND |k̂ − 1| ≤ k_res: rel alone would let
a 1 % strength error through whenever the update is small against the weights (tol ≫ 1 % in bf16),
k̂ does not.  Where k_res > 1 % the layer's verdict says it cannot resolve k to 1 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

UNIT = {"fp64": 2.0**-53, "fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}
Z = 6.0  # Hoeffding multiplier: 2·exp(−18) ≈ 3e-8 false alarms per layer
SLACK = 1.01  # second-order rounding terms
NAMED = 0.02  # k within 2 % of a named value (−1, s, 1/s, √r, 1/√r) gets that value's name
WRONG_BELOW = 0.9  # correlation ⟨D, X⟩/(‖D‖‖X‖) below this, with no simpler story: another adapter
RESOLVE = 0.01  # the strength error a check should see


@dataclass(frozen=True)
class Bounds:
    a: float  # on |X|
    b: float  # on |M|


def bounds(base: str, merged: str) -> Bounds:
    ub, um = UNIT.get(base, 2.0**-24), UNIT.get(merged, 2.0**-24)
    b = ub * (2.0 if ub > um else 1.0) + (um if base != merged else 0.0)
    return Bounds(max(ub, um), b)


@dataclass(frozen=True)
class Quantities:
    """Exact sums for one layer (float64)."""

    d_sq: float  # ‖D‖²
    x_sq: float  # ‖X‖²
    dot: float  # ⟨D, X⟩
    m_norm: float  # ‖M‖
    m_max: float  # max |M|
    x_max: float  # an upper bound of max |X| (row norms of B × column norms of A)
    sigma: np.ndarray  # (r,) σ(X), descending
    g: np.ndarray  # (r,) u_iᵀ D v_i: D's coefficient on X's i-th direction
    scale: float  # s
    rank: int  # r


@dataclass(frozen=True)
class Diagnosis:
    ok: bool
    code: str  # verified, reverted, strength, sign_flip, scale_twice, scale_missing, rslora_scale,
    #            rank_truncated, wrong_adapter, mismatch, zero_update, below_rounding
    detail: str
    rel_error: float
    tolerance: float
    k: float
    k_resolution: float
    correlation: float
    truncated_rank: int | None = None


def diagnose(q: Quantities, bd: Bounds, tol_override: float | None = None) -> Diagnosis:
    x_norm, d_norm = math.sqrt(q.x_sq), math.sqrt(q.d_sq)
    if x_norm == 0:
        ok = d_norm <= SLACK * bd.b * q.m_norm
        what = (
            "the adapter's ΔW is zero and MERGED equals BASE"
            if ok
            else "changed, but the adapter's ΔW is zero"
        )
        return Diagnosis(ok, "zero_update" if ok else "mismatch", what, 0.0, 0.0, 1.0, 0.0, 0.0)
    tol = SLACK * (bd.a * x_norm + bd.b * q.m_norm) / x_norm if tol_override is None else tol_override
    rel = math.sqrt(max(q.d_sq - 2 * q.dot + q.x_sq, 0.0)) / x_norm
    k = q.dot / q.x_sq
    k_res = Z * (bd.a * q.x_max + bd.b * q.m_max) / x_norm
    corr = q.dot / (d_norm * x_norm) if d_norm > 0 else 0.0
    common: dict[str, Any] = dict(rel_error=rel, tolerance=tol, k=k, k_resolution=k_res, correlation=corr)
    unresolved = (
        f"; cannot resolve k to 1 % in this layer: rounding bound {k_res:.2g}" if k_res > RESOLVE else ""
    )
    if tol >= 1.0:  # the whole update is below what rounding can hide
        return Diagnosis(
            True, "below_rounding", f"update below MERGED's rounding (bound {tol:.2g})", **common
        )
    if rel <= tol and abs(k - 1) <= k_res:
        return Diagnosis(
            True, "verified", f"MERGED − BASE = s·B·A within rounding (k = {k:.4f}){unresolved}", **common
        )
    if d_norm <= SLACK * bd.b * q.m_norm:
        return Diagnosis(False, "reverted", "reverted: MERGED equals BASE (up to rounding)", **common)
    rest = math.sqrt(max(q.d_sq - q.dot * k, 0.0)) / x_norm  # ‖D − k̂X‖/‖X‖
    if rest <= SLACK * (bd.a * abs(k) * x_norm + bd.b * q.m_norm) / x_norm:
        code, detail = _strength(k, q.scale, q.rank)
        known = f"; k known to ±{k_res:.2g}" if not unresolved else unresolved
        return Diagnosis(False, code, detail + known, **common)
    j = _truncation(q, tol)
    if j is not None:
        kept = float(np.sum(q.sigma[:j] ** 2) / q.x_sq)
        detail = (
            f"rank-truncated merge: D matches the adapter's top {j} of {q.rank} directions "
            f"({kept:.1%} of its energy)"
        )
        return Diagnosis(False, "rank_truncated", detail, truncated_rank=j, **common)
    if corr < WRONG_BELOW:
        return Diagnosis(
            False, "wrong_adapter", f"wrong adapter: correlation {corr:.3f} with s·B·A", **common
        )
    return Diagnosis(
        False,
        "mismatch",
        f"relative error {rel:.3g} > {tol:.3g} (k = {k:.4f}, correlation {corr:.4f})",
        **common,
    )


def _strength(k: float, s: float, r: int) -> tuple[str, str]:
    """Name k: −1, the scale applied twice (k = s) or missing (k = 1/s), rsLoRA's √r, else k×."""

    def near(v: float) -> bool:
        return abs(k - v) <= NAMED * abs(v)

    named = [("sign_flip", -1.0, "sign flip: MERGED = BASE − s·B·A")]
    if abs(abs(s) - 1) > 2 * NAMED:
        named += [
            ("scale_twice", s, f"scale applied twice: k = {k:.4f} ≈ s = α/r = {s:g}"),
            ("scale_missing", 1 / s, f"scale missing: k = {k:.4f} ≈ 1/s (B·A merged without α/r = {s:g})"),
        ]
    if r > 1:
        root = math.sqrt(r)
        named += [
            ("rslora_scale", root, f"rsLoRA mismatch: k = {k:.4f} ≈ √r (α/√r applied where α/r was meant)"),
            (
                "rslora_scale",
                1 / root,
                f"rsLoRA mismatch: k = {k:.4f} ≈ 1/√r (α/r applied where α/√r was meant)",
            ),
        ]
    for code, v, detail in named:
        if near(v):
            return code, detail
    return "strength", f"strength {k:.4f}× (MERGED = BASE + k·s·B·A)"


def _truncation(q: Quantities, tol: float) -> int | None:
    """The smallest j < r with ‖D − X_j‖/‖X‖ ≤ tol, X_j the top-j truncation of X, or None:
    ‖D − X_j‖² = ‖D‖² − 2Σ_{i≤j} σᵢgᵢ + Σ_{i≤j} σᵢ²."""
    n = int(np.count_nonzero(q.sigma > 0))
    if n < 2:
        return None
    resid = q.d_sq - 2 * np.cumsum(q.sigma[:n] * q.g[:n]) + np.cumsum(q.sigma[:n] ** 2)  # (n,)
    rel = np.sqrt(np.clip(resid, 0.0, None)) / math.sqrt(q.x_sq)
    hits = np.nonzero(rel[: n - 1] <= tol)[0]
    return int(hits[0]) + 1 if hits.size else None
