"""The study's tables (study.json), computed from the journals alone: order-free and deterministic.

Unit of analysis: the adapter, as in Gradience's Study 14.  An adapter's utilisation is the mean of
stable rank / r over its live layers; its energy fraction is the median over live layers of
k@0.9 / r.  Dead adapters (every layer ΔW = 0) are counted and listed, and left out of every
utilisation statistic.  Records are sorted by source and values sorted before any sum, so a study
that was resumed, or run on another executor, gives byte-identical tables.

Statistics: numpy linear-interpolated percentiles; std is the population std (ddof 0); Pearson and
Spearman (average ranks for ties) r(nominal rank, utilisation), with 95 % percentile bootstrap
intervals (`BOOTSTRAP` resamples of adapters, fixed seed; resamples with a constant column are
skipped).  Layer-level figures come from layers.csv for comparison.

Hand-written where scipy.stats has them (Pearson, Spearman, average ranks, the bootstrap), and
checked against scipy in tests/test_study.py: importing scipy.stats costs ≈ 1 CPU-s, more than a
whole study of 200 MiniLM-sized adapters (≈ 0.7 s); `scipy.stats.bootstrap` returns NaN for the
whole interval when one resample has a constant column, and its per-resample statistics took 20.7
CPU-s for 1,000 resamples of 50,000 adapters against 3.5 s for the vectorised ones here.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import median, percentile
from .failure import Failure
from .model import (
    THRESHOLDS,
    AboveOne,
    AdapterRecord,
    Correlation,
    Counts,
    Estimate,
    Extreme,
    Group,
    Stats,
    StudyTables,
)
from .store import FAILURES, read_layer_columns, read_records

BOOTSTRAP = 1000
SEED = 0
EXTREMES = 5  # most / least utilised adapters listed
FAILURES_LISTED = 100  # failed adapters listed by name in study.json / study.md (all in failures.jsonl)
HIGH_UTILISATION = 0.34  # Study 14: "10 % above 0.34"

# Gradience 0.11 "Study 14": 114 PEFT adapters from the Hub, 22 base architectures, 10,302 layers.
REFERENCE: dict[str, Any] = {
    "name": "Gradience Study 14",
    "n_adapters": 114,
    "n_architectures": 22,
    "n_layers": 10302,
    "utilisation": {"mean": 0.164, "median": 0.148, "std": 0.118, "p75": 0.183, "max": 0.62},
    "share_above_0.34": 0.10,
    "by_rank": {4: (3, 0.395, 0.345), 8: (18, 0.187, 0.163), 16: (26, 0.150, 0.147),
                32: (11, 0.088, 0.078), 64: (12, 0.198, 0.072), 128: (2, 0.019, 0.019)},
    "pearson": -0.173,
    "by_module_type": {"attention": 0.155, "mlp": 0.162},
    "energy_fraction@0.9": {"median": 0.50, "p90": 0.75},
}  # fmt: skip


def build(out: Path) -> StudyTables:
    records = sorted((AdapterRecord.from_dict(d) for d in read_records(out)), key=lambda r: r.source)
    failures = sorted((Failure.from_dict(d) for d in read_records(out, FAILURES)), key=lambda f: f.source)
    live = [r for r in records if not r.dead]
    util = np.array(sorted(_mean(r) for r in live), dtype=float)
    layer_util, layer_frac, above = _layers(out)
    return StudyTables(
        counts=_counts(records, failures),
        utilisation=_stats(util, share_above=HIGH_UTILISATION),
        by_rank=_groups(live, lambda r: r.nominal_rank, layers=False),
        correlation=_correlation(live),
        by_module_type=_by_module_type(live),
        by_architecture=_by_count(_groups(live, lambda r: r.architecture)),
        by_base_model=_by_count(_groups(live, lambda r: r.base_model or "unknown")),
        compression={t: _stats(sorted(r.energy_fraction[t].median for r in live)) for t in THRESHOLDS},
        layer_utilisation=layer_util,
        layer_energy_fraction=layer_frac,
        above_one=above,
        dead=tuple(r.source for r in records if r.dead),
        failures=tuple(failures[:FAILURES_LISTED]),
        most_utilised=_extremes(live, reverse=True),
        least_utilised=_extremes(live, reverse=False),
        reference={**REFERENCE, "by_rank": {str(k): v for k, v in REFERENCE["by_rank"].items()}},
    )


def _mean(r: AdapterRecord) -> float:
    """A live adapter's mean utilisation (None only on a dead adapter, which has no live layer)."""
    if r.utilisation.mean is None:
        raise ValueError(f"{r.source}: a live adapter without a mean utilisation")
    return r.utilisation.mean


def _counts(records: list[AdapterRecord], failures: list[Failure]) -> Counts:
    return Counts(
        sources=len(records) + len(failures),
        adapters=len(records),
        failed=len(failures),
        layers=sum(r.n_layers for r in records),
        dead_layers=sum(r.n_dead_layers for r in records),
        architectures=len({r.architecture for r in records}),
        formats=dict(sorted(Counter(r.format or "unknown" for r in records).items())),
        failure_kinds=dict(sorted(Counter(f.kind for f in failures).items())),
    )


def _stats(values, share_above: float | None = None) -> Stats:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return Stats(0)
    mean = math.fsum(v) / v.size
    return Stats(
        n=int(v.size),
        mean=mean,
        median=median(v),
        std=float(np.sqrt(math.fsum((v - mean) ** 2) / v.size)),
        p75=percentile(v, 75),
        p90=percentile(v, 90),
        min=float(v[0]),
        max=float(v[-1]),
        share_above=None
        if share_above is None
        else (share_above, float(np.count_nonzero(v > share_above) / v.size)),
    )


def _group(name: str | int, values: list[float], layers: int | None) -> Group:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return Group(name, 0, None, None, layers)
    return Group(name, int(v.size), math.fsum(v) / v.size, median(v), layers)


def _groups(
    live: list[AdapterRecord], key: Callable[[AdapterRecord], Any], layers: bool = True
) -> tuple[Group, ...]:
    """Live adapters grouped by `key` (sorted by it): utilisation mean / median, layers."""
    values: dict[Any, list[float]] = defaultdict(list)
    n_layers: Counter[Any] = Counter()
    for r in live:
        values[key(r)].append(_mean(r))
        n_layers[key(r)] += r.n_layers
    return tuple(_group(k, values[k], n_layers[k] if layers else None) for k in sorted(values))


def _by_count(groups: tuple[Group, ...]) -> tuple[Group, ...]:
    return tuple(sorted(groups, key=lambda g: (-g.n, g.name)))


def _by_module_type(live: list[AdapterRecord]) -> tuple[Group, ...]:
    """Per type, over live adapters: adapters having it, its layers, and mean / median over those
    adapters of their mean utilisation of that type's live layers."""
    out = []
    for kind in ("attention", "mlp", "other"):
        vals, n_layers = [], 0
        for r in live:
            t = r.module_types.get(kind)
            if t is not None:
                n_layers += t.n_layers
                if t.utilisation_mean is not None:
                    vals.append(t.utilisation_mean)
        if n_layers:
            out.append(_group(kind, vals, n_layers))
    return tuple(out)


def _layers(out: Path) -> tuple[Stats, Stats, AboveOne]:
    """Per-layer view over live layers: utilisation and k@0.9 / r; and how many layers (of how
    many adapters) have either above 1 (LoHa / LoKr: r is the allocated lora_dim while ΔW's rank
    can exceed it)."""
    util, frac = [], []
    n_util = n_frac = 0
    sources: set[str] = set()
    columns = ("source", "dead", "utilisation", "rank", "energy_rank@0.9")
    for source, dead, u, rank, k90 in read_layer_columns(out, columns):
        if dead != "True":
            util.append(float(u))
            frac.append(int(k90) / int(rank))
            n_util += util[-1] > 1
            n_frac += frac[-1] > 1
            if util[-1] > 1 or frac[-1] > 1:
                sources.add(source)
    return _stats(util), _stats(frac), AboveOne(n_util, n_frac, len(sources))


def _extremes(live: list[AdapterRecord], reverse: bool) -> tuple[Extreme, ...]:
    sign = -1.0 if reverse else 1.0
    ranked = sorted(live, key=lambda r: (sign * _mean(r), r.source))
    return tuple(Extreme(r.source, _mean(r), r.nominal_rank, r.architecture) for r in ranked[:EXTREMES])


def _rows_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row pair of (B, n) arrays; NaN where a row is constant."""
    dx, dy = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    den = np.sqrt(np.einsum("ij,ij->i", dx, dx) * np.einsum("ij,ij->i", dy, dy))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.einsum("ij,ij->i", dx, dy) / den, np.nan)


def _rows_ranks(codes: np.ndarray, m: int) -> np.ndarray:
    """Average ranks within each row of (B, n) integer codes 0..m-1 (the value order): an element's
    rank is #smaller + (#equal + 1) / 2 within its row (`scipy.stats.rankdata(axis=1)`, in O(n)
    per row by counting the few distinct values rather than sorting)."""
    b = codes.shape[0]
    flat = (codes + m * np.arange(b)[:, None]).ravel()
    counts = np.bincount(flat, minlength=b * m).reshape(b, m)  # (B, m)
    less = np.cumsum(counts, axis=1) - counts  # (B, m)
    rows = np.arange(b)[:, None]
    return less[rows, codes] + (counts[rows, codes] + 1) / 2.0


def _correlation(live: list[AdapterRecord]) -> Correlation:
    """Pearson and Spearman r(nominal rank, utilisation), each with a 95 % percentile bootstrap.

    The point estimates and the resamples use the same row functions (`_rows_pearson`, counted
    ranks `_rows_ranks`; the module docstring says why not scipy).  Resamples with a constant
    column (every adapter of one rank) are skipped.  Same seed, same blocks: the resamples, hence
    the intervals, of earlier studies are kept."""
    x = np.array([float(r.nominal_rank) for r in live])  # (n,) sorted by source
    y = np.array([r.utilisation.mean for r in live])  # (n,)
    if x.size < 3:
        none = Estimate(None, None)
        return Correlation(int(x.size), BOOTSTRAP, SEED, none, none)
    (ux, cx), (uy, cy) = (np.unique(v, return_inverse=True) for v in (x, y))  # codes: value order
    ranks_x, ranks_y = _rows_ranks(cx[None], ux.size), _rows_ranks(cy[None], uy.size)  # (1, n)
    point = {  # NaN where a column is constant: reported as null
        "pearson": float(_rows_pearson(x[None], y[None])[0]),
        "spearman": float(_rows_pearson(ranks_x, ranks_y)[0]),
    }
    boot: dict[str, list[np.ndarray]] = {"pearson": [], "spearman": []}
    rng = np.random.default_rng(SEED)
    step = max(1, 4_000_000 // x.size)  # resamples per block: (step, n) arrays of ≤ 32 MB
    for start in range(0, BOOTSTRAP, step):
        idx = rng.integers(0, x.size, size=(min(step, BOOTSTRAP - start), x.size))  # (b, n)
        boot["pearson"].append(_rows_pearson(x[idx], y[idx]))
        boot["spearman"].append(_rows_pearson(_rows_ranks(cx[idx], ux.size), _rows_ranks(cy[idx], uy.size)))
    est = {}
    for name, r in point.items():
        values = np.concatenate(boot[name])
        values = values[np.isfinite(values)]
        ci = None
        if values.size and math.isfinite(r):
            ci = (percentile(values, 2.5), percentile(values, 97.5))
        est[name] = Estimate(_finite(float(r)), ci)
    return Correlation(int(x.size), BOOTSTRAP, SEED, est["pearson"], est["spearman"])


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
