"""`audit`: per-layer spectra of an adapter and the rank suggestions that follow from them.

Contract: one pass over the layers (passes.spectral_pass: parallel, a few layers in memory), exact
singular values from each layer's spectral core, metrics from metrics.METRICS, the rank policies
asked for (policies.py), the module-type and per-block summaries (groups.py).  With a base model,
a second, sequential pass reads the mapped base weights one at a time (base.py) for the
update-to-base ratios.  The report is a frozen value; rendering lives in render.py, the JSON schema
in docs/audit-schema.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsontext, metrics
from ..errors import FormatError, InvalidArgumentError
from ..formats import FORMATS, load
from ..order import natural_key
from ..passes import spectral_pass
from ..rounding import Rounding
from ..spectral import Core
from ..types import Adapter, LayerInfo, LoraDelta
from . import groups, policies, suggest

SCHEMA = "lorascope.audit/v1"
EFFECTIVE_RANK_DEFINITION = (
    "exp(H(p)), p = sigma / sum(sigma) over sigma_i > 1e-6 * sigma_1 (Roy & Vetterli 2007)"
)


@dataclass(frozen=True)
class AuditOptions:
    thresholds: tuple[float, ...] = (0.90,)  # the first one drives the suggestions
    rounding: Rounding = field(default_factory=Rounding)
    min_rank: int = 1
    progress: Callable[[int, int, str], None] | None = None  # (done, total, layer name)
    # keep each layer's spectral core (with vectors) on its LayerReport, so that a truncation
    # later (compress's budget / from-audit modes) needs no recomputation; O(r²) floats per layer
    keep_cores: bool = False
    policies: tuple[str, ...] = ()  # rank policies to run per layer (policies.POLICIES names)
    disagree_factor: float = 2.0  # a layer's policies disagree when max k > factor × min k
    base_model: str | None = None  # model folder or .safetensors file: update-to-base ratios
    top_blocks: int = 5  # blocks listed in summary.blocks.top

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise InvalidArgumentError("at least one energy threshold is needed")
        for tau in self.thresholds:
            if not 0.0 < tau <= 1.0:
                raise InvalidArgumentError(f"energy threshold must be in (0, 1], got {tau}")
        if len({metrics.energy_key(t) for t in self.thresholds}) != len(self.thresholds):
            raise InvalidArgumentError(f"energy thresholds repeat: {list(self.thresholds)}")
        if self.min_rank < 1:
            raise InvalidArgumentError(f"min rank must be ≥ 1, got {self.min_rank}")
        unknown = [p for p in self.policies if p not in policies.POLICIES]
        if unknown or len(set(self.policies)) != len(self.policies):
            raise InvalidArgumentError(f"rank policies must be distinct names of {list(policies.POLICIES)}")
        if not (math.isfinite(self.disagree_factor) and self.disagree_factor >= 1.0):
            raise InvalidArgumentError(f"disagreement factor must be ≥ 1, got {self.disagree_factor}")
        if self.top_blocks < 0:
            raise InvalidArgumentError(f"top blocks must be ≥ 0, got {self.top_blocks}")

    @property
    def tau(self) -> float:
        return self.thresholds[0]


@dataclass(frozen=True)
class LayerReport:
    info: LayerInfo
    sigma: np.ndarray  # (r,) singular values of the scaled ΔW, descending
    metrics: dict[str, float]
    dead: bool
    suggested_rank: int
    core: Core | None = field(default=None, repr=False, compare=False)  # AuditOptions.keep_cores
    policies: dict[str, int] = field(default_factory=dict)  # policy -> k (AuditOptions.policies)
    base: dict[str, Any] | None = None  # base_key/_sigma_max/_frobenius, udr, udr_f, sdi (base model)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def module_type(self) -> str:
        return groups.module_type(self.info.name)

    def to_dict(self) -> dict[str, Any]:
        i = self.info
        d: dict[str, Any] = {
            "name": i.name,
            "kind": i.kind,
            "rank": i.rank,
            "shape": [i.out_features, i.in_features],
            "scale": i.scale,
            "dtype": i.dtype,
            "dora": i.dora,
            "dead": self.dead,
            "params": i.params,
            "suggested_rank": self.suggested_rank,
            "module_type": self.module_type,
            "block": (groups.block_of(i.name) or (None,))[0],
        }
        d.update({k: _num(v) for k, v in self.metrics.items()})
        if self.policies:
            d["policies"] = dict(self.policies)
        if self.base is not None:
            d.update(self.base)
        d["singular_values"] = np.asarray(self.sigma, dtype=np.float64).tolist()  # Python floats, one C call
        return d


@dataclass(frozen=True)
class AuditReport:
    source: dict[str, Any]  # path, format, base model, config facts
    options: AuditOptions
    layers: tuple[LayerReport, ...]
    summary: dict[str, Any]
    suggestions: dict[str, Any]
    notes: tuple[str, ...] = ()
    policies: dict[str, Any] | None = None  # policies.summarise (AuditOptions.policies)

    def to_dict(self, *, singular_values: bool = True) -> dict[str, Any]:
        layers = [layer.to_dict() for layer in self.layers]
        if not singular_values:
            for d in layers:
                d.pop("singular_values")
        return {
            "schema": SCHEMA,
            "source": self.source,
            "definitions": {
                "effective_rank": EFFECTIVE_RANK_DEFINITION,
                "energy_rank": "min k with sum_{i<=k} sigma_i^2 >= tau * sum sigma_i^2",
                "stable_rank": "||dW||_F^2 / sigma_1^2",
                "utilisation": "stable_rank / allocated rank",
                "numerical_rank": f"#sigma_i > {metrics.NUMERICAL_RTOL:g} * sigma_1",
                "singular_values": "of the scaled update dW = scale * B @ A",
            },
            "options": {
                "thresholds": list(self.options.thresholds),
                "rounding": str(self.options.rounding),
                "min_rank": self.options.min_rank,
                "policies": list(self.options.policies),
                "disagree_factor": self.options.disagree_factor,
                "base_model": self.options.base_model,
            },
            "summary": self.summary,
            "suggestions": self.suggestions,
            **({"policies": self.policies} if self.policies is not None else {}),
            "notes": list(self.notes),
            "layers": layers,
        }

    def to_json(self, **kwargs: Any) -> str:
        # allow_nan=False: strict JSON only; every metric is finite by construction.
        return jsontext.dumps(self.to_dict(**kwargs))

    def to_dataframe(self):
        """Per-layer table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            from ..errors import MissingDependencyError

            raise MissingDependencyError("to_dataframe() needs pandas: pip install pandas") from None
        return pd.DataFrame([layer.to_dict() for layer in self.layers]).drop(columns=["singular_values"])


def _num(v: float) -> float | int:
    return int(v) if isinstance(v, (int, np.integer)) else float(v)


def audit_adapter(
    adapter: Adapter | str | Path, options: AuditOptions | None = None, **load_options: Any
) -> AuditReport:
    """Audit an adapter (an `Adapter` or a path).  See the module docstring."""
    options = options or AuditOptions()
    if not isinstance(adapter, Adapter):
        adapter = load(adapter, **load_options)
    if not adapter.layers:
        # nothing to audit: an error, never a summary of zero layers that suggests r=1
        raise FormatError("no LoRA layers to audit", path=adapter.path)

    def one(delta: LoraDelta, core: Core) -> LayerReport:
        return _layer_report(delta, core, options)

    layers = list(spectral_pass(adapter, one, vectors=options.keep_cores, progress=options.progress))
    layers.sort(key=lambda x: natural_key(x.name))  # every view lists layers.2 before layers.10
    notes = list(adapter.notes)
    source = _source(adapter)
    summary = _summary(layers, options)
    if options.base_model is not None:
        layers, source["base_model"], summary["udr"] = _with_base(
            adapter, layers, options.base_model, options.progress, notes
        )
    suggestions = _suggestions(adapter, layers, options)
    if summary["n_dead"]:
        notes.append(
            f"{summary['n_dead']} of {summary['n_layers']} layers are dead (ΔW = 0): "
            "an untrained adapter, or B never left its zero initialisation"
        )
    table = None
    if options.policies:
        rows = [(x.name, x.info.rank, x.policies, x.dead) for x in layers]
        table = policies.summarise(
            rows, options.policies, options.disagree_factor, options.rounding, options.min_rank
        )
    return AuditReport(source, options, tuple(layers), summary, suggestions, tuple(notes), table)


def _layer_report(delta: LoraDelta, core: Core, options: AuditOptions) -> LayerReport:
    info = delta.info
    spec = metrics.Spectrum(core.sigma, info.rank)  # (r,)
    values = metrics.compute(spec, options.thresholds)
    k = int(values[metrics.energy_key(options.tau)])
    suggested = suggest.layer_rank(k, info.rank, options.rounding, options.min_rank, spec.dead)
    shape = (info.out_features, info.in_features)
    ks = policies.layer_ks(spec, shape, options.tau, options.policies)
    core_kept = core if options.keep_cores else None
    return LayerReport(info, spec.sigma, values, spec.dead, suggested, core_kept, ks)


def _with_base(
    adapter: Adapter, layers: list[LayerReport], path: str, progress: Any, notes: list[str]
) -> tuple[list[LayerReport], dict[str, Any], dict[str, Any]]:
    """Layers with their update-to-base ratios, the base model's source entry, the udr summary."""
    from .base import measure, open_base, ratios  # only with a base model: start-up time of the rest

    base = open_base(path)
    module = FORMATS.get(adapter.format)
    names = [(module.model_path(x.info) if module else None) or x.name for x in layers]
    norms, problems = measure([x.info for x in layers], names, base, progress)
    if not norms:
        first = layers[0].name
        raise FormatError(
            f"no weight in the base model fits any of the {len(layers)} audited layers "
            f"(first layer {first}: {problems.get(first, 'missing')}); is it the adapter's base model?",
            path=path,
        )
    out = []
    for x in layers:
        n = norms.get(x.name)
        entry: dict[str, Any] = {"base_key": None, "base_sigma_max": None, "base_frobenius": None}
        entry.update({"udr": None, "udr_f": None, "sdi": None})
        if n is not None:
            entry.update(base_key=n.key, base_sigma_max=n.sigma_max, base_frobenius=n.frobenius)
            entry.update(ratios(x.metrics["sigma_max"], x.metrics["frobenius"], n))
        out.append(replace(x, base=entry))
    if problems:
        head = "; ".join(f"{k} ({v})" for k, v in list(problems.items())[:3])
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        notes.append(f"{len(problems)} layers have no usable base weight: {head}{more}")
    methods = sorted({n.method for n in norms.values()})
    src = {"path": path, "n_matched": len(norms), "norm_method": methods}
    src["unmatched"] = [{"name": k, "problem": v} for k, v in problems.items()]
    return out, src, _udr_summary(out)


def _udr_summary(layers: list[LayerReport]) -> dict[str, Any]:
    """Over layers with a base weight: udr / udr_f / sdi statistics and the udr > 0.1, > 0.3 shares."""
    rows = [x.base for x in layers if x.base is not None and x.base["udr"] is not None]
    udr = [r["udr"] for r in rows]
    out: dict[str, Any] = {"n_layers": len(rows)}
    out["udr"] = _stats(udr)
    out["udr_f"] = _stats([r["udr_f"] for r in rows if r["udr_f"] is not None])
    out["sdi"] = _stats([r["sdi"] for r in rows if r["sdi"] is not None])
    out["fraction_udr_gt_0_1"] = sum(u > 0.1 for u in udr) / len(udr) if udr else 0.0
    out["fraction_udr_gt_0_3"] = sum(u > 0.3 for u in udr) / len(udr) if udr else 0.0
    return out


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "min": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "median": metrics.median(a),
        "p90": metrics.percentile(a, 90),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def _summary(layers: list[LayerReport], options: AuditOptions) -> dict[str, Any]:
    live = [x for x in layers if not x.dead]
    out: dict[str, Any] = {
        "n_layers": len(layers),
        "n_dead": len(layers) - len(live),
        "allocated_ranks": sorted({x.info.rank for x in layers}),
        "params": sum(x.info.params for x in layers),
        "n_dora": sum(x.info.dora for x in layers),
    }
    for name in ("stable_rank", "effective_rank", "utilisation"):
        out[name] = _stats([x.metrics[name] for x in live])
    keys = [metrics.energy_key(tau) for tau in options.thresholds]
    for key in keys:
        out[key] = _stats([x.metrics[key] for x in live])
    values = {k: [x.metrics[k] for x in layers] for k in ("stable_rank", "utilisation", *keys)}
    names = [x.name for x in layers]
    out["by_type"] = groups.by_type(
        names, [x.info.params for x in layers], [not x.dead for x in layers], values, keys
    )
    energies = [x.metrics["frobenius"] ** 2 for x in layers]
    out["blocks"] = groups.block_energy(names, energies, options.top_blocks)
    return out


def _suggestions(adapter: Adapter, layers: list[LayerReport], options: AuditOptions) -> dict[str, Any]:
    key = metrics.energy_key(options.tau)
    ks = [x.metrics[key] for x in layers if not x.dead]
    cap = max((x.info.rank for x in layers), default=options.min_rank)
    current = sum(x.info.params for x in layers)
    out: dict[str, Any] = {"threshold": options.tau, "rounding": str(options.rounding)}
    for label, q in (("median", 50), ("p90", 90)):
        r = suggest.global_rank(ks, q, options.rounding, cap, options.min_rank)
        params = sum(x.info.params_at(r) for x in layers)
        out[label] = {"rank": r, "params": params, "reduction": _reduction(current, params)}
    per_layer = sum(x.info.params_at(x.suggested_rank) for x in layers)
    out["per_layer"] = {"params": per_layer, "reduction": _reduction(current, per_layer)}
    if layers:
        rslora = bool(adapter.config.get("use_rslora", False))
        out["peft_config"] = suggest.peft_patterns(
            [x.name for x in layers],
            [x.suggested_rank for x in layers],
            [x.info.scale for x in layers],
            rslora,
        )
    out["current_params"] = current
    return out


def _reduction(current: int, new: int) -> float:
    return 0.0 if current == 0 else round(1.0 - new / current, 6)


def _source(adapter: Adapter) -> dict[str, Any]:
    cfg = adapter.config
    src: dict[str, Any] = {"path": adapter.path, "format": adapter.format}
    for key in ("base_model_name_or_path", "r", "lora_alpha", "use_rslora", "use_dora", "task_type"):
        if key in cfg:
            src[key] = cfg[key]
    if adapter.modules_to_save:
        src["modules_to_save"] = list(adapter.modules_to_save)
    if adapter.metadata:
        src["metadata"] = {k: v for k, v in adapter.metadata.items() if isinstance(v, str) and len(v) < 200}
    if not math.isfinite(sum(x.scale for x in adapter.layers)):
        raise FormatError("non-finite scale (alpha / r)", path=adapter.path)
    return src
