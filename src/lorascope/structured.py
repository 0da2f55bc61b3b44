"""Spectral cores of structured updates: LyCORIS LoKr (Kronecker) and LoHa (Hadamard) layers.

`delta_core(delta)` is the core every per-layer pass builds (passes.spectral_pass): for a plain
layer `spectral.layer_core` of its factors; for a `types.StructuredDelta`, from its two sides
W₁ = U₁D₁ and W₂ = U₂D₂, never from the dense ΔW nor (for LoKr values) the wide plain factors:

* LoKr, ΔW = s·W₁ ⊗ W₂: σ(W₁ ⊗ W₂) = {σᵢ(W₁)·σⱼ(W₂)} (Van Loan 2000, the SVD of a Kronecker
  product is the Kronecker product of the SVDs); each side's σ from its own small core, O(k³).
* LoHa, ΔW = s·W₁ ⊙ W₂: rank ≤ r₁r₂ (the Khatri–Rao factors); the core is r₁r₂-sized from those
  factors, or min(m, n)-sized from the product W₁ ⊙ W₂ (O(m·n·(r₁+r₂))) when r₁r₂ > min(m, n).

Truncation needs singular vectors: a LoKr core with vectors is built from the plain Kronecker
factors (or the product when k₁k₂ > min(m, n)); only values come from the algebra.
"""

from __future__ import annotations

import math

import numpy as np

from .spectral import Core, NonFiniteError, checked_core, layer_core, product_core
from .types import LoraDelta


def kron_core(sides, scale: float = 1.0) -> Core:
    """Singular values of ΔW = scale·(U₁D₁) ⊗ (U₂D₂), values only: σ(W₁ ⊗ W₂) = {σᵢ(W₁)·σⱼ(W₂)}
    (the SVD of a Kronecker product is the Kronecker product of the SVDs), each side from its own
    small core, so the (o₁o₂)×(i₁i₂) matrix and its kron factors are never formed."""
    cores = []
    for which, (u, d) in zip(("down", "up"), sides, strict=True):  # side 1 → "down", 2 → "up"
        try:
            cores.append(layer_core(d, u))
        except NonFiniteError:
            raise NonFiniteError(which) from None
    c1, c2 = cores
    s2 = np.sort(np.outer(c1.s2, c2.s2).ravel())[::-1]  # (k1·k2,) of the normalised sides
    empty = np.empty((0, 0))
    return checked_core(Core(empty, empty, s2, None, scale, (sum(c1.shift), sum(c2.shift)), "values"))


def delta_core(delta, *, vectors: bool = False) -> Core:
    """The core of a loaded layer (a `types.LoraDelta`): r×r from its factors; min(m, n)-sized from
    ΔW when r > min(m, n); for a LyCORIS `StructuredDelta` (LoKr, LoHa) from its sides: a LoKr's
    values from `kron_core`; otherwise the plain factors (Khatri–Rao for LoHa, rank ≤ r₁r₂) or,
    when their inner size exceeds min(m, n), the product formed from the sides (O(m·n·r))."""
    info = delta.info
    sides = getattr(delta, "sides", None)
    if sides is None:
        return layer_core(*factor_arrays(delta), info.scale, vectors=vectors)
    for n, (u, d) in enumerate(sides):  # NaN/Inf: side n (0, 1), its U ("up") or D ("down")
        for which, x in (("up", u), ("down", d)):
            if not np.isfinite(x).all():
                raise NonFiniteError(which, n)
    if delta.op == "kron" and not vectors:
        return kron_core(sides, info.scale)
    inner = math.prod(u.shape[1] for u, _ in sides)  # k1·k2 or r1·r2
    if inner > min(info.out_features, info.in_features):
        return product_core(delta.product(), 0, info.scale, vectors=vectors, length=inner)
    return layer_core(delta.down, delta.up, info.scale, vectors=vectors)


def factor_arrays(delta) -> tuple[np.ndarray, np.ndarray]:
    """(down, up) as the spectral functions take them: a bf16 layer's stored bit patterns
    (`formats.StoredDelta.bits`, widened block by block inside the Gram products), else the factors."""
    bits = getattr(delta, "bits", None)
    return bits if bits is not None else (delta.down, delta.up)


def compact(delta):
    """An exact equivalent of a loaded layer (`types.LoraDelta`) whose inner size is at most
    min(m, n): the layer itself when its rank (a LoKr / LoHa: k₁k₂, r₁r₂) is no larger, else
    (down, up) = (the unscaled product (m, n), I_m) when m ≤ n, or (I_n, the product) — what a
    caller that stacks factors (merge-audit's pair Grams) needs so that an r = 6000 layer on a
    2×2 matrix costs a 2×2 problem.  NonFiniteError ("down" / "up") for NaN/Inf factors."""
    info = delta.info
    m, n = info.out_features, info.in_features
    sides = getattr(delta, "sides", None)
    if sides is not None:
        inner = math.prod(u.shape[1] for u, _ in sides)
    else:  # read off the stored arrays: a bf16 layer's factors stay unwidened when it is returned
        inner = factor_arrays(delta)[0].shape[0]
    if inner <= min(m, n):
        return delta
    if sides is not None:
        parts = [("up", u) for u, _ in sides] + [("down", d) for _, d in sides]
    else:
        parts = [("down", delta.down), ("up", delta.up)]
    for which, x in parts:
        if not np.isfinite(x).all():
            raise NonFiniteError(which)
    p = delta.product()  # (m, n) float64
    if m <= n:
        return LoraDelta(info, p, np.eye(m))
    return LoraDelta(info, np.eye(n), p)
