"""Rank policies: a suggested rank k for one layer from its singular values, by several rules.

Every policy is a pure function `(spectrum, shape, tau) -> k` of the layer's singular values
(metrics.Spectrum: σ of the scaled ΔW and the allocated rank r), the layer's (out, in) shape (only
`oht` uses it) and the first energy threshold τ (only `energy` uses it).  All of them look at the
numerically non-zero part of the spectrum, σᵢ > 10⁻⁶·σ₁ (n values; the same cut as
`numerical_rank`), and a dead layer (σ₁ = 0) gets k = 0 from every policy.  Definitions, exactly
(docs/metrics.md has them with examples):

  energy  k@τ: min k with Σ_{i≤k} σᵢ² ≥ τ·Σσᵢ²
  erank   ceil(exp(H(p))), p = σ/Σσ (the effective rank), within [1, r]; the ceiling allows a
          relative slack of 1e-9 so that n equal values give n, not n + 1
  knee    y = Σ_{j≤i} σⱼ² / Σσ² (i = 0 … n−1), x = i/(n−1); y is smoothed by a moving average of
          width w = min(5, max(3, ⌊n/3⌋)) with zero padding at both ends (numpy.convolve, "same"),
          when n ≥ w; the knee is i* = argmax(y_s − x) (the first maximum).  If i* ≥ max(1, ⌊0.85·n⌋)
          or max(y_s − x) < 0.1 the curve is flat and k = r (no compression); else k = i* + 1.
          n < 2 gives k = n.
  oht     β = min(out, in)/max(out, in), ω = 0.56β³ − 0.95β² + 1.82β + 1.43, τ_oht = ω·median(σ)
          over the n values; k = #{σᵢ > τ_oht} within [1, r]; r < 3 gives k = 1.  The median is
          of the r LoRA singular values, not of the full matrix's spectrum as in Gavish & Donoho's
          rule, so this is a heuristic (it is what Gradience's optimal_hard_threshold computes).

`summarise` gives each policy's global statistics over live layers and the layers where the
policies disagree by more than a factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import metrics
from ..errors import InvalidArgumentError
from ..rounding import Rounding
from . import suggest

Policy = Callable[[metrics.Spectrum, tuple[int, int], float], int]

ERANK_SLACK = 1e-9
KNEE_FLAT_DIFF = 0.1  # max(y_s − x) below this: no knee
KNEE_TAIL = 0.85  # a knee at or after this fraction of n: no knee
NO_COMPRESS = 0.8  # a layer whose k ≥ 0.8·r is counted as "keep the rank"


def _live(s: metrics.Spectrum) -> np.ndarray:
    """(n,) the numerically non-zero singular values, descending."""
    if s.dead:
        return s.sigma[:0]
    return s.sigma[s.sigma > metrics.NUMERICAL_RTOL * s.sigma[0]]


def energy(s: metrics.Spectrum, shape: tuple[int, int], tau: float) -> int:
    return metrics.energy_rank(s, tau) if not s.dead else 0


def erank(s: metrics.Spectrum, shape: tuple[int, int], tau: float) -> int:
    if s.dead:
        return 0
    e = metrics.effective_rank(s)
    return int(min(max(math.ceil(e * (1.0 - ERANK_SLACK)), 1), s.rank))


def knee(s: metrics.Spectrum, shape: tuple[int, int], tau: float) -> int:
    sigma = _live(s)
    n = sigma.size
    if n < 2:
        return n
    e = sigma**2  # (n,)
    y = np.cumsum(e) / e.sum()  # (n,) cumulative energy fraction
    x = np.arange(n, dtype=np.float64) / (n - 1)  # (n,)
    w = min(5, max(3, n // 3))
    y_s = np.convolve(y, np.ones(w) / w, mode="same") if n >= w else y  # zero-padded ends
    diff = y_s - x
    i = int(np.argmax(diff))
    if i >= max(1, int(KNEE_TAIL * n)) or diff[i] < KNEE_FLAT_DIFF:
        return s.rank
    return int(min(max(i + 1, 1), s.rank))


def oht(s: metrics.Spectrum, shape: tuple[int, int], tau: float) -> int:
    sigma = _live(s)
    if sigma.size == 0:
        return 0
    if s.rank < 3:
        return 1
    beta = min(shape) / max(shape)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    cut = omega * metrics.median(sigma)
    return int(min(max(int(np.count_nonzero(sigma > cut)), 1), s.rank))


# name -> policy, in display order
POLICIES: dict[str, Policy] = {"energy": energy, "erank": erank, "knee": knee, "oht": oht}
# Gradience's policy names, accepted as aliases
ALIASES = {
    "energy_threshold": "energy",
    "entropy_effective": "erank",
    "knee_elbow": "knee",
    "optimal_hard_threshold": "oht",
}


def parse(text: str) -> tuple[str, ...]:
    """'energy,erank,knee' (or 'all') -> canonical policy names, in the order given, no repeats."""
    names = list(POLICIES) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    out: list[str] = []
    for name in names:
        canon = ALIASES.get(name, name)
        if canon not in POLICIES:
            known = ", ".join([*POLICIES, "all"])
            raise InvalidArgumentError(f"unknown rank policy {name!r}; choose from {known}")
        if canon in out:
            raise InvalidArgumentError(f"rank policy {canon!r} given twice")
        out.append(canon)
    if not out:
        raise InvalidArgumentError("--policies needs at least one policy name")
    return tuple(out)


def layer_ks(s: metrics.Spectrum, shape: tuple[int, int], tau: float, names: Sequence[str]) -> dict[str, int]:
    return {name: POLICIES[name](s, shape, tau) for name in names}


def summarise(
    layers: Sequence[tuple[str, int, dict[str, int], bool]],
    names: Sequence[str],
    factor: float,
    rounding: Rounding,
    min_rank: int,
) -> dict[str, Any]:
    """`layers`: (name, allocated r, {policy: k}, dead).  Per policy over live layers: median, p90
    (numpy linear interpolation), max, the uniform rank the suggestion rules give for the median and
    p90 (rounded up, capped at the largest r), and the share of layers with k ≥ 0.8·r.  Disagreement:
    live layers whose largest k exceeds `factor` × their smallest, largest ratio first."""
    live = [x for x in layers if not x[3]]
    cap = max((x[1] for x in layers), default=min_rank)
    table: dict[str, Any] = {}
    for name in names:
        ks = np.asarray([x[2][name] for x in live], dtype=float)
        keep = sum(1 for x in live if x[2][name] >= NO_COMPRESS * x[1])
        table[name] = {
            "median": metrics.percentile(ks, 50) if ks.size else 0.0,
            "p90": metrics.percentile(ks, 90) if ks.size else 0.0,
            "max": int(ks.max()) if ks.size else 0,
            "rank_median": suggest.global_rank(ks.tolist(), 50, rounding, cap, min_rank),
            "rank_p90": suggest.global_rank(ks.tolist(), 90, rounding, cap, min_rank),
            "share_keep_rank": keep / len(live) if live else 0.0,
        }
    rows: list[dict[str, Any]] = []
    for layer, _r, ks_of, _dead in live:
        row = [ks_of[n] for n in names]
        ratio = max(row) / max(min(row), 1)  # every policy gives k ≥ 1 on a live layer
        if len(names) > 1 and ratio > factor:
            rows.append({"name": layer, "ratio": round(ratio, 6), "ks": dict(ks_of)})
    rows.sort(key=lambda d: (-d["ratio"], d["name"]))
    return {
        "names": list(names),
        "factor": factor,
        "global": table,
        "n_disagree": len(rows),
        "disagree": rows,
    }
