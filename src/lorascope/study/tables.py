"""The study's tables (study.json), computed from the journals alone: order-free and deterministic.

Unit of analysis: the adapter, as in Gradience's Study 14.  An adapter's utilisation is the mean of
stable rank / r over its live layers; its energy fraction is the median over live layers of
k@0.9 / r.  Dead adapters (every layer ΔW = 0) are counted and listed, and left out of every
utilisation statistic.  Records are sorted by source and values sorted before any sum, so a study
that was resumed, or run on another executor, gives byte-identical tables.

Statistics: numpy linear-interpolated percentiles; std is the population std (ddof 0); Pearson and
Spearman (average ranks for ties) r(nominal rank, utilisation), from scipy.stats, with 95 %
percentile bootstrap intervals (`BOOTSTRAP` resamples of adapters, fixed seed; resamples with a
constant column are skipped).  Layer-level figures come from layers.csv for comparison.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError
from ..metrics import median, percentile
from .store import FAILURES, read_layer_columns, read_records

SCHEMA = "lorascope.study/v1"
BOOTSTRAP = 1000
SEED = 0
EXTREMES = 5  # most / least utilised adapters listed
FAILURES_LISTED = 100  # failed adapters listed by name in study.json / study.md (all in failures.jsonl)
FEW_ADAPTERS = 10  # below this many live adapters the bootstrap intervals are flagged as unreliable
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


def build(out: Path) -> dict[str, Any]:
    records = sorted(read_records(out), key=lambda r: r["source"])
    failures = sorted(read_records(out, FAILURES), key=lambda r: r["source"])
    live = [r for r in records if not r["dead"]]
    util = np.array(sorted(r["utilisation"]["mean"] for r in live), dtype=float)
    return {
        "schema": SCHEMA,
        "counts": _counts(records, failures),
        "utilisation": _stats(util, share_above=HIGH_UTILISATION),
        "by_rank": _by_rank(live),
        "correlation": _correlation(live),
        "by_module_type": _by_module_type(live),
        "by_architecture": _by_key(live, "architecture"),
        "by_base_model": _by_key(live, "base_model"),
        "compression": _compression(live),
        "layers": _layers(out),
        "dead": {"n": len(records) - len(live), "sources": [r["source"] for r in records if r["dead"]]},
        "failures": [{k: f[k] for k in ("source", "kind", "reason")} for f in failures[:FAILURES_LISTED]],
        "most_utilised": _extremes(live, reverse=True),
        "least_utilised": _extremes(live, reverse=False),
        "reference": {**REFERENCE, "by_rank": {str(k): v for k, v in REFERENCE["by_rank"].items()}},
    }


def _counts(records: list[dict], failures: list[dict]) -> dict[str, Any]:
    return {
        "sources": len(records) + len(failures),
        "adapters": len(records),
        "failed": len(failures),
        "layers": sum(r["n_layers"] for r in records),
        "dead_layers": sum(r["n_dead_layers"] for r in records),
        "architectures": len({r["architecture"] for r in records}),
        "formats": dict(sorted(Counter(r["format"] for r in records).items())),
        "failure_kinds": dict(sorted(Counter(f["kind"] for f in failures).items())),
    }


def _stats(values: np.ndarray, share_above: float | None = None) -> dict[str, Any]:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": int(v.size),
        "mean": math.fsum(v) / v.size,
        "median": median(v),
        "std": float(np.sqrt(math.fsum((v - math.fsum(v) / v.size) ** 2) / v.size)),
        "p75": percentile(v, 75),
        "p90": percentile(v, 90),
        "min": float(v[0]),
        "max": float(v[-1]),
    }
    if share_above is not None:
        out[f"share_above_{share_above:g}"] = float(np.count_nonzero(v > share_above) / v.size)
    return out


def _mean_median(values: list[float]) -> dict[str, Any]:
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None}
    return {"n": int(v.size), "mean": math.fsum(v) / v.size, "median": median(v)}


def _by_rank(live: list[dict]) -> list[dict[str, Any]]:
    groups: dict[int, list[float]] = defaultdict(list)
    for r in live:
        groups[r["nominal_rank"]].append(r["utilisation"]["mean"])
    return [{"rank": k, **_mean_median(groups[k])} for k in sorted(groups)]


def _by_key(live: list[dict], key: str) -> list[dict[str, Any]]:
    groups: dict[str, list[float]] = defaultdict(list)
    layers: Counter[str] = Counter()
    for r in live:
        name = r.get(key) or "unknown"
        groups[name].append(r["utilisation"]["mean"])
        layers[name] += r["n_layers"]
    rows = [{key: k, "layers": layers[k], **_mean_median(v)} for k, v in groups.items()]
    return sorted(rows, key=lambda row: (-row["n"], row[key]))


def _by_module_type(live: list[dict]) -> dict[str, Any]:
    """Per type, over live adapters: adapters having it, its layers, and mean / median over those
    adapters of their mean utilisation of that type's live layers."""
    out = {}
    for kind in ("attention", "mlp", "other"):
        vals, n_layers = [], 0
        for r in live:
            t = r["module_types"].get(kind)
            if t is not None:
                n_layers += t["n_layers"]
                if t["utilisation_mean"] is not None:
                    vals.append(t["utilisation_mean"])
        if n_layers:
            out[kind] = {"layers": n_layers, **_mean_median(vals)}
    return out


def _compression(live: list[dict]) -> dict[str, Any]:
    out = {}
    for key in ("energy_fraction@0.9", "energy_fraction@0.99"):
        med = np.array(sorted(r[key]["median"] for r in live), dtype=float)
        out[key] = {k: v for k, v in _stats(med).items() if k in ("n", "mean", "median", "p75", "p90")}
    return out


def _layers(out: Path) -> dict[str, Any]:
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
    return {
        "utilisation": _stats(np.array(util)),
        "energy_fraction@0.9": _stats(np.array(frac)),
        "above_one": {"utilisation": n_util, "energy_rank@0.9": n_frac, "adapters": len(sources)},
    }


def _extremes(live: list[dict], reverse: bool) -> list[dict[str, Any]]:
    key = (
        (lambda r: (-r["utilisation"]["mean"], r["source"]))
        if reverse
        else (lambda r: (r["utilisation"]["mean"], r["source"]))
    )
    return [
        {"source": r["source"], "utilisation": r["utilisation"]["mean"], "nominal_rank": r["nominal_rank"],
         "architecture": r["architecture"]}
        for r in sorted(live, key=key)[:EXTREMES]
    ]  # fmt: skip


def require() -> None:
    """Refuse to start a study whose tables could not be written (checked before any audit)."""
    if importlib.util.find_spec("scipy") is None:
        _scipy_stats()


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:
        raise MissingDependencyError(
            "the study's correlations need scipy", hint="pip install 'lorascope[study]'"
        ) from None
    return stats


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


def _correlation(live: list[dict]) -> dict[str, Any]:
    """Pearson and Spearman r(nominal rank, utilisation), each with a 95 % percentile bootstrap.

    The point estimates are scipy's (`pearsonr`, `spearmanr`).  The bootstrap is our own, not
    `scipy.stats.bootstrap`: that returns NaN for the whole interval as soon as one resample has a
    constant column (every adapter of one rank), common with few adapters or few rank tiers, while
    the study skips those resamples; and its statistics per resample (`rankdata`, `pearsonr` along
    an axis) cost 20.7 CPU-s for 1,000 resamples of 50,000 adapters against 3.5 s for the
    vectorised ones here (counted ranks, `_rows_ranks`; tests check both against scipy).  Same
    seed, same blocks: the resamples, hence the intervals, of earlier studies are kept."""
    stats = _scipy_stats()
    x = np.array([float(r["nominal_rank"]) for r in live])  # (n,) sorted by source
    y = np.array([r["utilisation"]["mean"] for r in live])  # (n,)
    out: dict[str, Any] = {"n": int(x.size), "bootstrap": BOOTSTRAP, "seed": SEED, "ci": 0.95}
    if x.size < 3:
        return {**out, "pearson": {"r": None, "ci95": None}, "spearman": {"r": None, "ci95": None}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's ConstantInputWarning: r is NaN, reported as null
        point = {"pearson": stats.pearsonr(x, y).statistic, "spearman": stats.spearmanr(x, y).statistic}
    (ux, cx), (uy, cy) = (np.unique(v, return_inverse=True) for v in (x, y))  # codes: value order
    boot: dict[str, list[np.ndarray]] = {"pearson": [], "spearman": []}
    rng = np.random.default_rng(SEED)
    step = max(1, 4_000_000 // x.size)  # resamples per block: (step, n) arrays of ≤ 32 MB
    for start in range(0, BOOTSTRAP, step):
        idx = rng.integers(0, x.size, size=(min(step, BOOTSTRAP - start), x.size))  # (b, n)
        boot["pearson"].append(_rows_pearson(x[idx], y[idx]))
        boot["spearman"].append(_rows_pearson(_rows_ranks(cx[idx], ux.size), _rows_ranks(cy[idx], uy.size)))
    for name, r in point.items():
        values = np.concatenate(boot[name])
        values = values[np.isfinite(values)]
        ci = None
        if values.size and math.isfinite(r):
            ci = [percentile(values, 2.5), percentile(values, 97.5)]
        out[name] = {"r": _finite(float(r)), "ci95": ci}
    return out


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None
