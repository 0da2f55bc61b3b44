"""Exact spectra of low-rank updates ΔW = s·B·A from the factors only (A: (r, n), B: (m, r)).

The dense m×n matrix is never formed.  Everything rests on one r×r core (`Core`, built once per
layer by `layer_core` / `gram_core` and then reused by audit, compress, merge-audit and merge):

    G_A = A Aᵀ = F Fᵀ          (r, r)  F: Cholesky factor of G_A, or U Λ^½ when G_A is ill-conditioned
    H   = Fᵀ G_B F = W Σ² Wᵀ    (r, r)  G_B = BᵀB;  Σ² = σ(BA)², W its eigenvectors
because σ(BA)² = eig(Aᵀ G_B A), whose non-zero part is eig(G_B G_A) = eig(Fᵀ G_B F).  With the
vectors, U_k = B·(F W_k Σ_k⁻¹) and V_kᵀ = (Σ_k⁻² (F W_k)ᵀ G_B)·A: a rank-k truncated SVD costs two thin
products more (`Core.truncate`).  The Gram products are BLAS-3 `syrk`s, O((m+n)·r²), ~10× faster
than a Householder QR of the tall factor at r = 64; the QR route (`lora_svd`) is kept for the
cases the Gram route cannot resolve (below).

Precision.  The Grams are formed in float64 whatever the storage dtype: bf16/fp16 values are
exact in float32, but float32 *accumulation* over n = 4,096-14,336 terms has errors ~√n·2⁻²⁴
relative to the row norms, which a trained adapter's correlated factor rows amplify (a real fp16
MiniLM adapter: 5.5e-5 relative error at σ = 1e-3·σ₁, against the 1e-6 we promise).  In float64
the absolute error of σᵢ² is O(ε₆₄·σ₁²): every σᵢ ≥ 1e-3·σ₁ is exact to ≤ 1e-9 relative
(tests/test_spectral.py checks ≤ 1e-6 against a dense float64 SVD of the stored values).  The thin
products that turn a core into factors that are then *stored* in 16 bits run in float32 (`work=`):
their error, ≤ r·2⁻²⁴·‖B‖‖P‖ per entry, is ≪ the 2⁻⁹ (bf16) / 2⁻¹¹ (fp16) rounding of the result.

Gram-route singular *vectors* are trusted when every kept σ² and the gap after σ_k are
≥ `GRAM_MIN_RATIO`·σ₁² (`Core.separated`): the top-k subspace is then exact to ~ε/1e-6 ≈ 1e-10.
Otherwise `truncated_svd` takes CholeskyQR2 (well-conditioned factors), else Householder QR.

Range: each Gram is scaled by an exact power of two to trace ~1 (`_normalised`, `Core.shift`), so
finite factors of any size (1e200) give their exact spectrum; NaN/Inf makes a Gram diagonal
non-finite and is refused.  Size: r > min(m, n) takes the product's min(m, n) core (`product_core`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .scratch import thread_scratch
from .types import factor_values

GRAM_MIN_RATIO = 1e-6
_CHOL_MIN_RATIO = 1e-5  # Cholesky root of G_A when its diagonal spans < 1e5 (cond(G_A) ≲ 1e10)
_CHOLQR_MAX_COND = 1e6  # CholeskyQR2 accepted below this estimated condition number of a factor
_ENERGY_SLACK = 1e-12  # τ = 1.0, or a sum equal to τ·total up to rounding, needs no extra direction


class NonFiniteError(ValueError):
    """A factor holds NaN or Inf: `which` = "down" or "up", `side` = index among stacked factors."""

    def __init__(self, which: str, side: int = 0):
        self.which, self.side = which, side
        super().__init__(f"{which} factor contains NaN or Inf")


def energy_k(sigma: np.ndarray, tau: float, total: float | None = None) -> int:
    """Smallest k with σ₁²+…+σ_k² ≥ τ·total for descending σ ≥ 0; total defaults to Σσᵢ².

    0 for an all-zero σ.  With an explicit `total` (e.g. ‖M‖²_F when σ is a sketch) the sum may
    never get there: then len(σ) + 1.  The one rule behind energy ranks, compress's energy mode,
    merge-audit's compared subspaces and the merge re-factorisation."""
    if sigma.size == 0 or not sigma[0] > 0:
        return 0
    top = float(sigma[0])  # σ/σ₁: the squares stay finite for any finite σ
    cum = np.cumsum((np.asarray(sigma, dtype=np.float64) / top) ** 2)  # (r,)
    target = tau * (cum[-1] if total is None else total / top / top) * (1.0 - _ENERGY_SLACK)
    return int(np.searchsorted(cum, target, side="left")) + 1


def factor_grams(a, b) -> tuple[np.ndarray, np.ndarray]:
    """(A Aᵀ, BᵀB) in float64 for A (r, n), B (m, r), by `syrk`.

    Factors stored in fp32/fp16/bf16 are widened to float64 one block of columns (rows) at a time,
    about 1 MiB, and the block Grams summed: the widened copy stays in the core's L2 cache instead
    of going to memory and back (with two workers on two cores, ~25 % faster than widening whole
    factors, which makes the pass memory-bound).  `a` and `b` may be tuples (A₁, A₂, …),
    (B₁, B₂, …): the Grams of the row-stacked [A₁; A₂; …] and column-stacked [B₁ B₂ …], whose
    off-diagonal blocks are the cross Grams merge-audit needs, computed without forming the stacks.
    A uint16 array holds bf16 bit patterns (`formats.StoredDelta.bits`): it is widened in the same
    blocks, so a bf16 factor is never copied whole to float32 (every function here takes them)."""
    xa = a if isinstance(a, tuple) else (a,)
    xb = b if isinstance(b, tuple) else (b,)
    return _gram_rows(xa), _gram_cols(xb)


_BLOCK_BYTES = 1 << 20  # float64 block widened at once: fits the 2 MiB L2 of current x86 cores


def _gram_rows(xs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Σ_j x[:, j] x[:, j]ᵀ for x = [x₁; x₂; …] (Σr, n), float64."""
    if len(xs) == 1 and xs[0].dtype == np.float64:
        return xs[0] @ xs[0].T  # (r, r)
    r, n = sum(x.shape[0] for x in xs), xs[0].shape[1]
    width = max(64, _BLOCK_BYTES // (8 * max(r, 1)))
    g = np.zeros((r, r))  # (r, r)
    buf = thread_scratch("f8", r * min(n, width), np.float64)  # flat: every block view is C-contiguous
    wide = _bits_buffer(xs, r * min(n, width))
    for j in range(0, n, width):
        w = min(width, n - j)
        blk = buf[: r * w].reshape(r, w)  # (r, w) float64
        top = 0
        for x in xs:
            _widen_into(blk[top : top + x.shape[0]], x[:, j : j + w], wide)
            top += x.shape[0]
        g += blk @ blk.T  # (r, r)  syrk
    return g


def _gram_cols(xs: tuple[np.ndarray, ...]) -> np.ndarray:
    """Σ_i x[i]ᵀ x[i] for x = [x₁ x₂ …] (m, Σr), float64."""
    if len(xs) == 1 and xs[0].dtype == np.float64:
        return xs[0].T @ xs[0]  # (r, r)
    r, m = sum(x.shape[1] for x in xs), xs[0].shape[0]
    height = max(64, _BLOCK_BYTES // (8 * max(r, 1)))
    g = np.zeros((r, r))  # (r, r)
    buf = thread_scratch("f8", min(m, height) * r, np.float64)
    wide = _bits_buffer(xs, min(m, height) * r)
    for i in range(0, m, height):
        h = min(height, m - i)
        blk = buf[: h * r].reshape(h, r)  # (h, r) float64
        left = 0
        for x in xs:
            _widen_into(blk[:, left : left + x.shape[1]], x[i : i + h], wide)
            left += x.shape[1]
        g += blk.T @ blk  # (r, r)  syrk
    return g


def _bits_buffer(xs: tuple[np.ndarray, ...], size: int) -> np.ndarray | None:
    """A uint32 scratch block for widening bf16 bit patterns, when any of `xs` holds them."""
    return thread_scratch("u4", size, np.uint32) if any(x.dtype == np.uint16 for x in xs) else None


def _widen_into(dest: np.ndarray, x: np.ndarray, wide: np.ndarray | None) -> None:
    """dest[...] = x's values in float64; a uint16 x holds bf16 bit patterns (formats.StoredDelta.bits),
    shifted into the high half of a 32-bit word in the cache-sized scratch block `wide` first."""
    if x.dtype != np.uint16:
        np.copyto(dest, x)
        return
    assert wide is not None
    word = wide[: x.size].reshape(x.shape)
    np.left_shift(x, 16, out=word, dtype=np.uint32)
    np.copyto(dest, word.view(np.float32))


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(factor_values(x), dtype=np.float64)


def check_finite(ga: np.ndarray, gb: np.ndarray, ranks: tuple[int, ...] = ()) -> None:
    """NonFiniteError when a diagonal block of a (stacked) Gram pair has a non-finite trace."""
    edges = np.cumsum((0, *(ranks or (ga.shape[0],))))
    for side, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        for which, g in (("down", ga), ("up", gb)):
            if not np.isfinite(np.trace(g[lo:hi, lo:hi])):
                raise NonFiniteError(which, side)


@dataclass(frozen=True)
class LowRankSVD:
    """Thin SVD of a low-rank update: ΔW = u @ diag(s) @ vt."""

    u: np.ndarray  # (m, k)
    s: np.ndarray  # (k,) descending
    vt: np.ndarray  # (k, n)

    def truncate(self, k: int) -> LowRankSVD:
        return LowRankSVD(self.u[:, :k], self.s[:k], self.vt[:k])

    def factors(self, split: str = "up") -> tuple[np.ndarray, np.ndarray]:
        """(down (k, n), up (m, k)) with ΔW = up @ down.

        split="up" puts S into up (kohya and PEFT conversion convention); "sqrt" splits √S/√S,
        which balances the factor norms (more fp16 headroom)."""
        if split == "sqrt":
            root = np.sqrt(self.s)
            return root[:, None] * self.vt, self.u * root[None, :]
        if split == "up":
            return self.vt.copy(), self.u * self.s[None, :]
        raise ValueError(f"unknown split {split!r}; use 'up' or 'sqrt'")


@dataclass(frozen=True)
class Core:
    """The r×r spectral core of ΔW = scale·B·A (module docstring)."""

    root: np.ndarray  # (r, r) F with F Fᵀ = G_A
    gb: np.ndarray  # (r, r) G_B = BᵀB
    s2: np.ndarray  # (r,) σ(B A)², descending, ≥ 0
    w: np.ndarray | None  # (r, r) eigenvectors of Fᵀ G_B F in s2 order; None: values only
    scale: float
    # the Grams are those of 2^-sa·A and 2^-sb·B (`_normalised`): σ(ΔW) = √s2·|scale|·2^(sa+sb)
    shift: tuple[int, int] = (0, 0)
    # what the core's "A" and "B" are (`layer_core`): "factors": down and up; "rows": the m×n
    # product up@down and I_m (r > m ≤ n); "cols": I_n and the product (r > n < m); "values":
    # no vectors at all (a Kronecker spectrum, `kron_core`)
    form: str = "factors"

    @property
    def sigma(self) -> np.ndarray:
        """(r,) singular values of the scaled ΔW, descending, float64."""
        return np.sqrt(self.s2) * _ldexp(abs(self.scale), sum(self.shift))

    def separated(self, k: int) -> bool:
        """Whether the Gram-route top-k singular vectors may be trusted (module docstring)."""
        s2, top = self.s2, self.s2[0] if self.s2.size else 0.0
        if not (0 < k <= s2.size and np.isfinite(top) and top > 0 and s2[k - 1] >= GRAM_MIN_RATIO * top):
            return False
        after = s2[k] if k < s2.size else 0.0
        return bool(s2[k - 1] - after >= GRAM_MIN_RATIO * top)

    def coefficients(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(P (r, k), R (k, r)) with U_k = B P and V_kᵀ = R A for the *unscaled* B A (needs w, σ_k > 0)."""
        assert self.w is not None, "core built without vectors"
        lk = self.root @ self.w[:, :k]  # (r, k)   B̂ lk = U_k Σ̂_k for the normalised B̂ = 2^-sb·B
        sig = np.sqrt(self.s2[:k])  # (k,)
        sa, sb = self.shift
        p, r = lk / sig[None, :], (lk.T @ self.gb) / self.s2[:k, None]
        return (times_pow2(p, -sb), times_pow2(r, -sa)) if sa or sb else (p, r)

    def _vectors(self, down, up, p: np.ndarray, r: np.ndarray, work) -> tuple[np.ndarray, np.ndarray]:
        """(U (m, k), Vᵀ (k, n)) = (B·p, r·A) for the core's form (see `form`), as thin products."""
        dn, u = (
            np.asarray(factor_values(down), dtype=work),
            np.asarray(factor_values(up), dtype=work),
        )  # (r0, n), (m, r0)
        p, r = p.astype(work), r.astype(work)
        if self.form == "rows":  # A = up@down (m, n), B = I_m
            return p, (r @ u) @ dn
        if self.form == "cols":  # A = I_n, B = up@down (m, n)
            return u @ (dn @ p), r
        return u @ p, r @ dn

    def factors(self, down, up, k: int, split: str, divide: float = 1.0, work=np.float64):
        """(down′ (k, n), up′ (m, k)) with up′ @ down′ = the rank-k truncated ΔW / `divide`, the
        singular values placed by `split` ("up": all in up′; "sqrt": √ in each), computed as two
        thin products with the scalings folded into the r×k coefficients (no pass over the
        results); None when the kept spectrum is not separated (use `truncated_factors`)."""
        if not self.separated(k):
            return None
        p, r = self.coefficients(k)  # (r, k), (k, r) for the unscaled B A
        sv = self.sigma[:k]  # (k,) singular values of ΔW
        sign = -1.0 if self.scale < 0 else 1.0
        if split == "sqrt":
            col, row = sign * np.sqrt(sv) / divide, np.sqrt(sv)
        elif split == "up":
            col, row = sign * sv / divide, np.ones(k)
        else:
            raise ValueError(f"unknown split {split!r}; use 'up' or 'sqrt'")
        up_k, down_k = self._vectors(down, up, p * col[None, :], r * row[:, None], work)  # (m, k), (k, n)
        return down_k, up_k

    def truncate(self, down, up, k: int, work=np.float64) -> LowRankSVD | None:
        """Rank-k truncated SVD of scale·up@down from this core (two thin products in `work`
        precision), or None when the kept spectrum is not separated (use `truncated_svd`)."""
        if not self.separated(k):
            return None
        p, r = self.coefficients(k)  # (r, k), (k, r)
        u, vt = self._vectors(down, up, p, r, work)  # (m, k), (k, n)
        return LowRankSVD(-u if self.scale < 0 else u, self.sigma[:k], vt)


def _gram_root(ga: np.ndarray) -> np.ndarray:
    """F (r, r) with F Fᵀ = G_A: the Cholesky factor when G_A is well conditioned (a tenth of an
    eigendecomposition's cost), else U Λ^½ (also valid for a singular G_A)."""
    try:
        low = np.linalg.cholesky(ga)  # (r, r) lower
        d = np.abs(np.diag(low))
        if d.size and d.min() > _CHOL_MIN_RATIO * d.max():
            return low
    except np.linalg.LinAlgError:
        pass
    lam, u = np.linalg.eigh(ga)  # (r,), (r, r)
    return u * np.sqrt(np.clip(lam, 0.0, None))[None, :]


def gram_core(
    ga: np.ndarray,
    gb: np.ndarray,
    scale: float = 1.0,
    *,
    vectors: bool = False,
    shift: tuple[int, int] = (0, 0),
    form: str = "factors",
) -> Core:
    """The core from G_A = A Aᵀ and G_B = BᵀB (both (r, r) symmetric PSD)."""
    root = _gram_root(ga)  # (r, r)
    h = root.T @ gb @ root  # (r, r)
    h = 0.5 * (h + h.T)
    s2, w = np.linalg.eigh(h) if vectors else (np.linalg.eigvalsh(h), None)  # ascending
    return Core(root, gb, np.maximum(s2[::-1], 0.0), None if w is None else w[:, ::-1], scale, shift, form)


def layer_core(down: np.ndarray, up: np.ndarray, scale: float = 1.0, *, vectors: bool = False) -> Core:
    """Grams of one layer's factors, checked for NaN/Inf, and their core: r×r, or min(m, n)-sized
    from the m×n product when the rank r exceeds min(m, n) (`product_core`)."""
    r, m, n = down.shape[0], up.shape[0], down.shape[1]
    if r > min(m, n):
        return product_core(*_scaled_product(down, up), scale, vectors=vectors, length=r)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):  # `_normalised` redoes those
        ga, gb = factor_grams(down, up)  # (r, r), (r, r)
    (ga, sa), (gb, sb) = _normalised(ga, down, "down", rows=True), _normalised(gb, up, "up", rows=False)
    return checked_core(gram_core(ga, gb, scale, vectors=vectors, shift=(sa, sb)))


class SpectrumOverflowError(ValueError):
    """Finite factors whose product ΔW has singular values beyond float64 (> 1.8e308)."""


_TRACE_RANGE = (2.0**-900, 2.0**900)  # a Gram trace outside this may have lost digits to under/overflow


def times_pow2(x: np.ndarray, e: int) -> np.ndarray:
    """x·2^e, exactly as np.ldexp(x, e) rounds it (one correctly rounded product with an exact
    power of two), ~10× faster on the r×r cores, where np.ldexp's integer exponent array dominates."""
    if e == 0:
        return x
    if -1074 <= e <= 1023:  # 2^e is a float64 (subnormal below -1022): x * 2^e is one rounding
        return x * math.ldexp(1.0, e)
    return np.ldexp(x, e)


def _ldexp(x: float, e: int) -> float:  # x·2^e, inf on overflow (math.ldexp raises instead)
    with np.errstate(over="ignore"):
        return float(np.ldexp(x, e))


def _peak(x: np.ndarray, which: str) -> int:
    """The binary exponent e of max|x| (max|x| < 2^e), 0 for a zero x; NonFiniteError on NaN/Inf."""
    x = factor_values(x)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not np.isfinite(peak):
        raise NonFiniteError(which)
    return math.frexp(peak)[1]


def _normalised(g: np.ndarray, x: np.ndarray, which: str, *, rows: bool) -> tuple[np.ndarray, int]:
    """(Ĝ, s): Ĝ = Gram of 2^-s·x with trace in [¼, 1), exact (powers of two).  A Gram whose
    accumulation over- or underflowed (|x| ≳ 1e154) is rebuilt from 2^-e·x; NaN/Inf → NonFiniteError."""
    t, e = float(np.trace(g)), 0
    if t == 0 and not np.any(factor_values(x)):  # a zero factor (an untrained B): nothing to rescale
        return g, 0
    if not (np.isfinite(t) and _TRACE_RANGE[0] < t < _TRACE_RANGE[1]):  # also t = 0: underflow
        e = _peak(x, which)
        y = np.ldexp(_f64(x), -e)  # (r, n) or (m, r), max |y| < 1
        g = y @ y.T if rows else y.T @ y  # (r, r)
        t = float(np.trace(g))
    s = math.frexp(t)[1] // 2  # 0 for t = 0 (all entries underflowed: nothing left to scale)
    return times_pow2(g, -2 * s), e + s


def checked_core(core: Core) -> Core:  # the core, or SpectrumOverflowError when σ₁ > float64 max
    if core.s2.size and not np.isfinite(core.sigma[0]):
        raise SpectrumOverflowError("the singular values of ΔW overflow float64")
    return core


def _scaled_product(down: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, int]:
    """(P, e) with up@down = 2^e·P, P (m, n) float64 formed from factors scaled to max |x| < 1."""
    ea, eb = _peak(down, "down"), _peak(up, "up")
    return np.ldexp(_f64(up), -eb) @ np.ldexp(_f64(down), -ea), ea + eb  # (m, r)@(r, n)


def product_core(
    p: np.ndarray, e: int, scale: float = 1.0, *, vectors: bool = False, length: int = 0
) -> Core:
    """The min(m, n)-sized core of ΔW = scale·2^e·P from P (m, n): P's row Gram, B = I_m ("rows")
    if m ≤ n, else its column Gram, A = I_n ("cols"); σ² padded with zeros to `length` (the rank r)."""
    m, n = p.shape
    if not np.isfinite(p).all():
        raise SpectrumOverflowError("the product of the factors overflows float64")
    if m <= n:
        ga, sa = _normalised(p @ p.T, p, "down", rows=True)  # (m, m)
        core = gram_core(ga, np.eye(m), scale, vectors=vectors, shift=(sa + e, 0), form="rows")
    else:
        gb, sb = _normalised(p.T @ p, p, "up", rows=False)  # (n, n)
        core = gram_core(np.eye(n), gb, scale, vectors=vectors, shift=(0, sb + e), form="cols")
    pad = np.zeros(max(length - core.s2.size, 0))  # as an r×r core would give
    return checked_core(replace(core, s2=np.concatenate([core.s2, pad])))


def lora_singular_values(down: np.ndarray, up: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Singular values of scale·up@down, descending, float64, length r (zeros included)."""
    return layer_core(down, up, scale).sigma


def lora_svd(down: np.ndarray, up: np.ndarray, scale: float = 1.0) -> LowRankSVD:
    """Exact thin SVD of scale·up@down via Householder QR of the factors (float64)."""
    qa, ra = np.linalg.qr(_f64(down).T)  # (n, r), (r, r)
    qb, rb = np.linalg.qr(_f64(up))  # (m, r), (r, r)
    # full_matrices=False: when r > m or r > n the core is not square; k = min(m, n, r)
    uc, s, vct = np.linalg.svd(rb @ ra.T, full_matrices=False)  # (r, k), (k,), (k, r)
    u = qb @ uc  # (m, k)
    return LowRankSVD(-u if scale < 0 else u, s * abs(scale), vct @ qa.T)  # vt (k, n)


def _cholqr2_t(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """For x (r, n) with r ≤ n: (Qᵀ (r, n) with orthonormal rows, R (r, r)) with xᵀ = Q R, or None.

    Two passes of Cholesky-QR (BLAS-3 only, ~5× faster than Householder QR for (14336, 64)); as
    accurate as Householder for cond(x) ≲ ε^-½ (Yamamoto et al. 2015), else None."""
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


def truncated_svd(
    down: np.ndarray, up: np.ndarray, scale: float, k: int, core: Core | None = None, *, work=np.float64
) -> LowRankSVD:
    """Rank-k truncated SVD of scale·up@down, equal to `lora_svd(down, up, scale).truncate(k)`:
    from the layer's core when the kept spectrum is separated (pass `core` if it is already
    built, with vectors), else CholeskyQR2 when the factors are well conditioned, else
    Householder QR.  `work`: precision of the final thin products on the Gram route."""
    if core is None or core.w is None:
        core = layer_core(down, up, scale, vectors=True)
    fast = core.truncate(down, up, k, work)
    if fast is not None:
        return fast
    a, b = _f64(down), _f64(up)  # (r, n), (m, r)
    r = a.shape[0]
    fa = _cholqr2_t(a) if r <= a.shape[1] else None
    fb = _cholqr2_t(b.T) if fa is not None and r <= b.shape[0] else None
    if fa is None or fb is None:
        return lora_svd(a, b, scale).truncate(k)
    (qat, ra), (qbt, rb) = fa, fb  # Aᵀ = Q_a R_a, B = Q_b R_b
    uc, s, vct = np.linalg.svd(rb @ ra.T)  # (r, r), (r,), (r, r)
    u = qbt.T @ uc[:, :k]  # (m, k)
    return LowRankSVD(-u if scale < 0 else u, s[:k] * abs(scale), vct[:k] @ qat)  # vt (k, n)


def truncated_factors(
    down: np.ndarray,
    up: np.ndarray,
    scale: float,
    k: int,
    split: str = "up",
    divide: float = 1.0,
    core: Core | None = None,
    *,
    work=np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """(down′ (k′, n), up′ (m, k′)) with up′ @ down′ = rank-k truncation of scale·up@down, divided by
    `divide`, S placed by `split`; k′ = min(k, m, n, r) on the QR route.  The core route when it
    applies (`Core.factors`), else `truncated_svd`'s CholeskyQR2 / Householder routes."""
    if core is None or core.w is None:
        core = layer_core(down, up, scale, vectors=True)
    fast = core.factors(down, up, k, split, divide, work)
    if fast is not None:
        return fast
    d, u = truncated_svd(down, up, scale, k, core).factors(split)  # (k′, n), (m, k′)
    return d, u / divide
