"""`merge_audit`: predict how two adapters will interact when merged, layer by layer.

Contract: layers are matched by name (match.py: as read, or by kohya spelling across formats); layers in
only one adapter are listed, never silently dropped; a shared name with different shapes is an error
(the adapters were trained on different base models).  One pass, one pair of layers in memory at a
time, no dense ΔW except the bounded sign-conflict grid (pairwise.py).  The report is a frozen
value: `to_dict()`/`to_json()` (schema `lorascope.merge_audit/v1`, strict JSON, no Infinity),
`plan()` (a MergePlan for `merge`), rendering in render.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsontext, metrics
from ..errors import FormatError, InvalidArgumentError
from ..formats import load
from ..order import natural_key, natural_sorted
from ..parallel import ordered_map
from ..passes import check_sigma, nonfinite_error
from ..spectral import NonFiniteError, SpectrumOverflowError
from ..structured import compact
from ..types import Adapter, LayerInfo
from .match import layer_keys
from .methods import get_method
from .pairwise import PairMetrics, PairOptions, pair_metrics, stacked_grams, weighted_sigma
from .peft_args import peft_equivalent
from .plan import LayerPlan, MergePlan
from .verdict import REDUNDANT_WEIGHT, VERDICTS, Recommendation, Thresholds, classify, recommend

SCHEMA = "lorascope.merge_audit/v1"


@dataclass(frozen=True)
class MergeAuditOptions:
    pair: PairOptions = field(default_factory=PairOptions)
    thresholds: Thresholds = field(default_factory=Thresholds)
    weights: tuple[float, float] = (1.0, 1.0)  # the user's intended merge weights
    progress: Callable[[int, int, str], None] | None = None


@dataclass(frozen=True)
class LayerPair:
    info1: LayerInfo
    info2: LayerInfo
    metrics: PairMetrics
    effective_ranks: tuple[float, float]
    verdict: str
    reasons: tuple[str, ...]
    recommendation: Recommendation

    @property
    def name(self) -> str:
        return self.info1.name

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        p, rec = self.metrics, self.recommendation
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.info1.kind,
            "shape": list(p.shape),
            "ranks": [self.info1.rank, self.info2.rank],
            "k": [p.k1, p.k2],
            "effective_ranks": [_f(x) for x in self.effective_ranks],
            "norms": [_f(p.norm1), _f(p.norm2)],
            "magnitude_ratio": _f(p.magnitude_ratio),
            "imbalance": _f(p.imbalance),
            "cosine": _f(p.cosine),
            "overlap": _f(p.overlap),
            "overlap_left": _f(p.overlap_left),
            "overlap_right": _f(p.overlap_right),
            "chance_overlap": _f(p.chance),
            "overlap_excess": _f(p.overlap_excess),
            "agreement": _f(p.agreement),
            "interference": _f(p.interference),
            "n_conflicting": p.n_conflicting,
            "conflict_share": _f(p.conflict_share),
            "sign_conflict": _f(p.sign_conflict),
            "sign_entries": p.sign_entries,
            "sign_sampled": p.sign_sampled,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "recommendation": {
                "method": rec.method,
                "weights": list(rec.weights),
                "density": _f(rec.density),
                "trim": rec.trim,
                "drop": rec.drop,
                "rank": rec.rank,
                "compress_first": {str(i): k for i, k in rec.compress_first.items()},
                "reasons": list(rec.reasons),
            },
        }
        if vectors:
            out["principal_cosines_left"] = [_f(x) for x in p.cos_left]
            out["principal_cosines_right"] = [_f(x) for x in p.cos_right]
            out["singular_values"] = [[_f(x) for x in p.sigma1], [_f(x) for x in p.sigma2]]
        return out


@dataclass(frozen=True)
class MergeAuditReport:
    sources: tuple[dict[str, Any], dict[str, Any]]
    options: MergeAuditOptions
    layers: tuple[LayerPair, ...]
    only: tuple[tuple[str, ...], tuple[str, ...]]  # layers only in the first / only in the second
    summary: dict[str, Any]
    notes: tuple[str, ...] = ()

    def layer(self, name: str) -> LayerPair:
        for x in self.layers:
            if x.name == name:
                return x
        matches = [x for x in self.layers if name in x.name]
        if len(matches) == 1:
            return matches[0]
        hint = f"{len(matches)} layers contain it" if matches else "no shared layer has that name"
        raise InvalidArgumentError(f"layer {name!r}: {hint}")

    def to_dict(self, vectors: bool = False) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "adapters": list(self.sources),
            "thresholds": self.options.thresholds.to_dict(),
            "options": {
                "energy": self.options.pair.energy,
                "conflict_projection": self.options.pair.conflict_projection,
                "sign_density": self.options.pair.sign_density,
                "sign_exact_max": self.options.pair.sign_exact_max,
                "sign_sample": self.options.pair.sign_sample,
                "weights": list(self.options.weights),
            },
            "summary": self.summary,
            "only_first": list(self.only[0]),
            "only_second": list(self.only[1]),
            "notes": list(self.notes),
            "layers": [x.to_dict(vectors) for x in self.layers],
            "plan": self.plan().to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return jsontext.dumps(self.to_dict(**kwargs))

    def plan(self) -> MergePlan:
        w = self.options.weights
        layers = {}
        for x in self.layers:
            rec = x.recommendation
            layers[x.name] = LayerPlan(
                method=rec.method,
                weights=tuple(wi * mi for wi, mi in zip(w, rec.weights, strict=True)),
                density=rec.density,
                rank=None if rec.method == "linear" else rec.rank,
                compress_first=dict(rec.compress_first),
            )
        notes = [
            f"layer {n} is only in adapter {i + 1}: merged with its weight"
            for i, names in enumerate(self.only)
            for n in names
        ]
        dense = [lp.method for lp in layers.values() if get_method(lp.method).kind == "dense"]
        if dense:
            notes.append(
                f"lossy: {len(dense)} layers use {'/'.join(sorted(set(dense)))}, whose sparsified ΔW is "
                "re-factorised at the plan's rank and loses part of the merge; merge reports that loss "
                "and fails only above a --max-error you set (raise a layer's rank, or set its method "
                "to linear, to keep more)"
            )
        plan = MergePlan(
            tuple(w),
            LayerPlan("linear"),
            layers,
            tuple(s["path"] or "" for s in self.sources),
            notes=tuple(notes),
        )
        return replace(plan, peft=peft_equivalent(self, plan))


def merge_audit(
    first: Adapter | str | Path,
    second: Adapter | str | Path,
    options: MergeAuditOptions | None = None,
    **load_options: Any,
) -> MergeAuditReport:
    """Pairwise metrics, verdict and recommendation for every shared layer (module docstring)."""
    options = options or MergeAuditOptions()
    a = first if isinstance(first, Adapter) else load(first, **load_options)
    b = second if isinstance(second, Adapter) else load(second, **load_options)
    if a.path is not None and a.path == b.path:
        raise InvalidArgumentError(
            "both adapters are the same file; give two different adapters", path=a.path
        )
    ka, kb = layer_keys([a, b])
    b_by_key = {key: name for name, key in kb.items()}
    # layers in natural order (layers.2 before layers.10) in every view of the report
    shared = sorted(
        ((n, b_by_key[k]) for n, k in ka.items() if k in b_by_key), key=lambda x: natural_key(x[0])
    )
    keys_a = set(ka.values())
    only = (
        tuple(natural_sorted(n for n, k in ka.items() if k not in b_by_key)),
        tuple(natural_sorted(n for n, k in kb.items() if k not in keys_a)),
    )
    if not shared:
        raise FormatError(
            f"the adapters share no layer (first has {len(a.names)}, second {len(b.names)}, e.g. "
            f"{a.names[:1]} vs {b.names[:1]}); were they trained on the same base model?",
            path=b.path,
        )
    layers = []
    _check_shapes(a, b, shared)
    for i, layer in enumerate(_layers(a, b, shared, options)):
        layers.append(layer)
        if options.progress:
            options.progress(i + 1, len(shared), shared[i][0])
    notes = list(a.notes) + list(b.notes)
    if a.modules_to_save or b.modules_to_save:
        notes.append(
            f"fully trained modules ({', '.join(sorted({*a.modules_to_save, *b.modules_to_save}))}) are not "
            "audited and a merge keeps only the first adapter's; a head trained with one update reads "
            "features the other update also moves, which weight-space geometry cannot see: evaluate the "
            "merged adapter on each task (docs/merge-experiment.md)"
        )
    if only[0] or only[1]:
        notes.append(f"{len(only[0])} layers only in the first adapter, {len(only[1])} only in the second")
    return MergeAuditReport(
        (_source(a), _source(b)), options, tuple(layers), only, _summary(layers), tuple(notes)
    )


def _check_shapes(a: Adapter, b: Adapter, shared: list[tuple[str, str]]) -> None:
    for n1, n2 in shared:
        i1, i2 = a.info(n1), b.info(n2)
        if (i1.out_features, i1.in_features) != (i2.out_features, i2.in_features):
            raise FormatError(
                f"layer {n1}: shapes differ ({i1.out_features}×{i1.in_features} vs "
                f"{i2.out_features}×{i2.in_features}); the adapters belong to different base models",
                path=b.path,
            )


def _layers(a: Adapter, b: Adapter, shared: list[tuple[str, str]], options: MergeAuditOptions):
    """LayerPairs in order, whole layer pairs per worker under the thread policy
    (parallel.ordered_map): read + widening, stacked Grams, cores, sign grid."""

    def one(names: tuple[str, str]) -> LayerPair:
        deltas = []
        for x, name in zip((a, b), names, strict=True):
            delta = x.delta(name)
            try:  # a rank above min(m, n) (or a LoKr / LoHa): an exact min(m, n)-sized equivalent
                deltas.append(compact(delta))
            except NonFiniteError as e:
                raise nonfinite_error(delta.info, e.which, x.path) from None
        return _layer(a, b, (deltas[0], deltas[1]), options)

    return ordered_map(one, shared)


def _layer(a: Adapter, b: Adapter, deltas, options: MergeAuditOptions) -> LayerPair:
    i1, i2 = deltas[0].info, deltas[1].info
    d1, d2 = deltas
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # σ₁ beyond passes.SIGMA_LIMIT is refused below
            grams = stacked_grams(d1, d2)  # (r₁+r₂)² each: the metrics' and the averaged spectrum's
            p = pair_metrics(d1, d2, options.pair, grams)
    except NonFiniteError as e:  # NaN/Inf in a factor
        raise nonfinite_error((i1, i2)[e.side], e.which, (a, b)[e.side].path) from None
    except SpectrumOverflowError as e:  # finite factors, but ΔW itself beyond float64
        raise FormatError(f"layers {i1.name} / {i2.name}: {e}", path=a.path) from None
    check_sigma(i1, p.sigma1, a.path)  # energies σ² must stay finite
    check_sigma(i2, p.sigma2, b.path)
    eff = (
        metrics.effective_rank(metrics.Spectrum(p.sigma1, i1.rank)),
        metrics.effective_rank(metrics.Spectrum(p.sigma2, i2.rank)),
    )
    verdict, reasons = classify(p, options.thresholds)
    merged = _averaged_sigma(d1, d2, options.weights, grams) if verdict == "REDUNDANT" else None
    rec = recommend(p, verdict, (i1.rank, i2.rank), options.thresholds, merged)
    return LayerPair(i1, i2, p, eff, verdict, reasons, rec)


def _averaged_sigma(d1, d2, weights: tuple[float, float], grams) -> np.ndarray:
    """Singular values of ½(w₁ΔW₁ + w₂ΔW₂) from the pair's stacked Grams (what `merge --method
    svd` truncates for a REDUNDANT layer: verdict.recommend picks its rank from them)."""
    half = REDUNDANT_WEIGHT
    return weighted_sigma(d1, d2, (half * weights[0], half * weights[1]), grams)


def _summary(layers: list[LayerPair]) -> dict[str, Any]:
    counts = {v: sum(x.verdict == v for x in layers) for v in VERDICTS}
    worst = max((x.verdict for x in layers), key=VERDICTS.index)
    weight = np.array([max(x.metrics.norm1, x.metrics.norm2) for x in layers])  # (L,)
    weight = weight / weight.sum() if weight.sum() > 0 else np.full(len(layers), 1 / len(layers))

    def wmean(key: Callable[[PairMetrics], float]) -> float:
        return float(np.sum(weight * np.array([key(x.metrics) for x in layers])))

    n1 = float(np.sqrt(sum(x.metrics.norm1**2 for x in layers)))
    n2 = float(np.sqrt(sum(x.metrics.norm2**2 for x in layers)))
    return {
        "n_shared": len(layers),
        "verdicts": counts,
        "overall": worst,
        "weighted_overlap_excess": wmean(lambda p: p.overlap_excess),
        "weighted_cosine": wmean(lambda p: p.cosine),
        "weighted_agreement": wmean(lambda p: p.agreement),
        "total_norms": [n1, n2],
        "weighting": "each layer by max(‖ΔW₁‖_F, ‖ΔW₂‖_F)",
    }


def _source(adapter: Adapter) -> dict[str, Any]:
    cfg = adapter.config
    src: dict[str, Any] = {"path": adapter.path, "format": adapter.format, "n_layers": len(adapter.layers)}
    ranks = sorted({x.rank for x in adapter.layers})
    src["ranks"] = ranks
    for key in ("base_model_name_or_path", "r", "lora_alpha", "use_rslora"):
        if key in cfg:
            src[key] = cfg[key]
    return src


def _f(v: float | None) -> float | None:
    """Strict-JSON number: None for missing or non-finite values (Gradience 0.11 wrote Infinity,
    which strict parsers reject)."""
    if v is None:
        return None
    v = float(v)
    return v if np.isfinite(v) else None
