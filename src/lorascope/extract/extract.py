"""`extract`: a LoRA adapter from a fully fine-tuned (or merged) checkpoint and its base.

Contract.  Two passes over the checkpoints, one tensor pair in memory at a time: `survey.survey`
measures every change and `survey.plan_extraction` sorts them; then each LoRA layer is read again,
ΔW = W_tuned − W_base is formed densely (float64 for fp32/fp64 outputs, else float32), and its
truncated SVD gives up = U_k·Σ_k, down = V_kᵀ at scale 1 (alpha = rank: compress's "up" split).
The rank k comes from compress's rank modes and rounding rule (`compress.plan.layer_rank`, with the
layer's full rank min(m, n) as the cap).  The exact SVD (LAPACK) is used unless the rank is fixed
and small against the layer (`lowrank.use_randomized`).  Every layer's loss ‖ΔW − s·B·A‖/‖ΔW‖ is
measured on the factors as stored (rounded to the output dtype), without forming B·A (`lowrank`).
Layers stream into the format's writer as they are computed (`formats.save`), so the output is
complete or absent.  Full weights (LayerNorm, embeddings, heads, biases) go into PEFT's
`modules_to_save` / `lora_bias`; other formats list them as not written.  The result adapter is
audited (`audit_adapter`) and its summary returned with the per-layer table.

Not done: the budget and from-audit rank modes (they need every spectrum before any layer is
written: a third pass), LoRA on embeddings (kept as full weights instead).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsontext
from ..audit import AuditOptions, audit_adapter
from ..compress.plan import LOCAL_MODES, RankMode, layer_rank
from ..errors import InvalidArgumentError, UnsupportedError
from ..files import check_parent, write_text
from ..formats import FORMATS, check_dest, load, output_path, save, write_safetensors_typed
from ..parallel import ordered_map
from ..types import DTYPES, Adapter, LayerInfo, LoraDelta, round_to_dtype
from .checkpoint import Checkpoint, open_checkpoint
from .lowrank import distance, exact_svd, factored_sq_norm, inner, randomized_svd, sq_norm, use_randomized
from .survey import Change, Plan, Progress, plan_extraction, survey

SCHEMA = "lorascope.extract/v1"
PEFT_PREFIX = "base_model.model."
DEFAULT_MIN_CHANGE = 1e-6


@dataclass(frozen=True)
class ExtractOptions:
    mode: RankMode
    to: str = "peft"
    min_change: float = DEFAULT_MIN_CHANGE  # skip layers with ‖ΔW‖/‖W_base‖ below this
    modules: str | None = None  # regular expression searched in module paths: LoRA layers only there
    dtype: str | None = None  # factors' dtype; None: each tuned tensor's own
    progress: Progress | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mode.kind not in LOCAL_MODES:
            raise InvalidArgumentError(
                f"extract chooses each layer's rank from its own spectrum ({', '.join(LOCAL_MODES)}); "
                f"{self.mode.kind} needs every spectrum first"
            )
        if self.to not in FORMATS:
            raise InvalidArgumentError(f"unknown format {self.to!r}; choose from {', '.join(FORMATS)}")
        if not (math.isfinite(self.min_change) and self.min_change >= 0):
            raise InvalidArgumentError(f"--min-change must be a number ≥ 0, got {self.min_change}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidArgumentError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class ExtractedLayer:
    name: str
    shape: tuple[int, ...]
    rank: int
    full_rank: int  # min(m, n)
    rel_change: float  # ‖ΔW‖/‖W_base‖
    kept_energy: float  # Σ_{i≤k} σᵢ² / ‖ΔW‖² of the computed SVD
    rel_error: float  # ‖ΔW − B·A‖/‖ΔW‖ of the stored factors
    solver: str  # "exact" or "randomized"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "shape": list(self.shape)}


@dataclass(frozen=True)
class ExtractReport:
    base: str
    tuned: str
    output: str | None
    format: str
    mode: RankMode
    min_change: float
    layers: tuple[ExtractedLayer, ...]
    plan: Plan
    full_written: bool  # the full weights went into the output (PEFT) or are only listed
    unmatched_base: tuple[str, ...]
    unmatched_tuned: tuple[str, ...]
    not_float: tuple[str, ...]
    renamed: int
    audit: dict[str, Any] = field(default_factory=dict)  # summary and suggestions of the result

    def summary(self) -> dict[str, Any]:
        d_sq = sum((c.delta_norm**2 for c in self.plan.lora), 0.0)
        lost = sum(
            (x.rel_error**2) * (c.delta_norm**2) for x, c in zip(self.layers, self.plan.lora, strict=True)
        )
        return {
            "n_layers": len(self.layers),
            "params": int(sum(x.rank * (x.shape[0] + math.prod(x.shape[1:])) for x in self.layers)),
            "rel_frobenius_error": math.sqrt(lost / d_sq) if d_sq else 0.0,
            "max_layer_rel_error": max((x.rel_error for x in self.layers), default=0.0),
            "min_kept_energy": min((x.kept_energy for x in self.layers), default=1.0),
            "skipped_below_min_change": len(self.plan.below),
            "unchanged_tensors": self.plan.unchanged,
            "full_weight_modules": len(self.plan.full_modules),
        }

    def to_dict(self) -> dict[str, Any]:
        m = self.mode
        return {
            "schema": SCHEMA,
            "base": self.base,
            "tuned": self.tuned,
            "output": self.output,
            "format": self.format,
            "mode": {"kind": m.kind, "value": m.value, "rounding": str(m.rule), "max_rank": m.max_rank},
            "min_change": self.min_change,
            "summary": self.summary(),
            "layers": [x.to_dict() for x in self.layers],
            "lora_bias": [c.key for c in self.plan.lora_bias],
            "full_weights": {"written": self.full_written, "modules": list(self.plan.full_modules)},
            "below_min_change": [{"key": c.key, "rel_change": c.rel} for c in self.plan.below],
            "outside_modules": [c.key for c in self.plan.outside],
            "unmatched": {"base": list(self.unmatched_base), "tuned": list(self.unmatched_tuned)},
            "not_float": list(self.not_float),
            "renamed_keys": self.renamed,
            "audit": self.audit,
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())


# --- one layer ------------------------------------------------------------------------------------


def _layer_info(c: Change, rank: int, dtype: str) -> LayerInfo:
    m, n = c.shape[0], math.prod(c.shape[1:])
    conv = len(c.shape) == 4
    return LayerInfo(
        name=c.module,
        kind="conv" if conv else "linear",
        rank=rank,
        out_features=m,
        in_features=n,
        scale=1.0,
        dtype=dtype,
        weight_shape=tuple(c.shape) if conv else (),
    )


def extract_layer(
    c: Change, base: Checkpoint, tuned: Checkpoint, mode: RankMode, dtype: str
) -> tuple[ExtractedLayer, LoraDelta]:
    """ΔW of one layer, its truncated SVD at the planned rank, the factors rounded to `dtype`."""
    work = np.float64 if dtype in ("fp32", "fp64") else np.float32
    assert c.base_key is not None
    m = c.shape[0]
    d = tuned.get(c.key).reshape(m, -1).astype(work)  # (m, n)
    d -= base.get(c.base_key).reshape(m, -1)
    full = min(d.shape)
    probe = _layer_info(c, full, dtype)
    fixed = layer_rank(np.ones(1), probe, mode) if mode.kind == "rank" else None
    if fixed is not None and use_randomized(d.shape, fixed):
        u, s, vt = randomized_svd(d, fixed)  # (m, k), (k,), (k, n)
        solver = "randomized"
    else:
        u, s, vt = exact_svd(d)  # (m, p), (p,), (p, n)
        solver = "exact"
    k = fixed if fixed is not None else layer_rank(s.astype(np.float64), probe, mode)
    up = round_to_dtype(u[:, :k] * s[None, :k], dtype)  # (m, k)
    down = round_to_dtype(vt[:k], dtype)  # (k, n)
    if not (np.isfinite(up).all() and np.isfinite(down).all()):
        raise UnsupportedError(f"layer {c.module}: factors overflow {dtype}; pass --dtype fp32 or bf16")
    d_sq = sq_norm(d)
    err = distance(d_sq, inner(d, up, down), factored_sq_norm(up, down)) / math.sqrt(d_sq)
    kept = float(np.sum(s[:k].astype(np.float64) ** 2)) / d_sq
    row = ExtractedLayer(c.module, c.shape, k, full, c.rel, min(kept, 1.0), err, solver)
    return row, LoraDelta(_layer_info(c, k, dtype), down, up)


# --- the pipeline ---------------------------------------------------------------------------------


def extract_checkpoint(
    base_path: str | Path, tuned_path: str | Path, dest: str | Path, options: ExtractOptions
) -> ExtractReport:
    """Extract, write `dest` in `options.to`, audit the result; see the module docstring."""
    out = output_path(options.to, dest)
    check_parent(out)
    check_dest(out, [base_path, tuned_path])
    base, tuned = open_checkpoint(base_path, "BASE"), open_checkpoint(tuned_path, "TUNED")
    found = survey(base, tuned, options.progress)
    plan = plan_extraction(found, options.min_change, options.modules)
    if not plan.lora:
        raise InvalidArgumentError(
            f"no weight changed by ≥ --min-change {options.min_change:g} "
            f"({len(plan.below)} changed less, {plan.unchanged} tensors unchanged): nothing to extract",
            path=tuned.path,
        )
    rows: list[ExtractedLayer] = []
    adapter = _streamed(plan, base, tuned, options, rows)
    passthrough = options.to == "peft" and bool(plan.full or plan.lora_bias)
    if passthrough:
        with tempfile.TemporaryDirectory(prefix=".lorascope-extract-", dir=out.parent) as tmp:
            written = save(adapter, out, format="peft", source=_staging(plan, base, tuned, Path(tmp)))
    else:
        written = save(adapter, out, format=options.to)
    result = audit_adapter(load(written, format=options.to), AuditOptions())
    surveyed = {c.key for c in found.changes}  # tuned-only keys that were measured are not "unmatched"
    return ExtractReport(
        base=base.path,
        tuned=tuned.path,
        output=str(written),
        format=options.to,
        mode=options.mode,
        min_change=options.min_change,
        layers=tuple(rows),
        plan=plan,
        full_written=passthrough,
        unmatched_base=found.match.only_base,
        unmatched_tuned=tuple(k for k in found.match.only_tuned if k not in surveyed),
        not_float=found.not_float,
        renamed=found.match.renamed,
        audit={"summary": result.summary, "suggestions": result.suggestions},
    )


def _streamed(
    plan: Plan, base: Checkpoint, tuned: Checkpoint, options: ExtractOptions, rows: list
) -> Adapter:
    """A lazy adapter whose layers are extracted while the writer consumes them; `rows` fills in."""
    dtypes = {c.key: options.dtype or c.dtype for c in plan.lora}
    layers = tuple(_layer_info(c, 1, dtypes[c.key]) for c in plan.lora)

    def one(c: Change) -> tuple[ExtractedLayer, LoraDelta]:
        return extract_layer(c, base, tuned, options.mode, dtypes[c.key])

    def stream() -> Iterator[LoraDelta]:
        for i, (row, delta) in enumerate(ordered_map(one, plan.lora, max_workers=1)):
            rows.append(row)
            if options.progress:
                options.progress(i + 1, len(plan.lora), f"svd {row.name}")
            yield delta

    return Adapter(format="memory", layers=layers, loader=_no_layers, path=tuned.path, stream=stream)


def _no_layers(info: LayerInfo) -> LoraDelta:
    """The loader of adapters that are only streamed (the extracted one) or hold no layers (staging)."""
    raise UnsupportedError(f"layer {info.name}: an extracted adapter is computed while it is written")


def _staging(plan: Plan, base: Checkpoint, tuned: Checkpoint, folder: Path) -> Adapter:
    """A PEFT adapter on disk holding only what the writer copies beside the LoRA factors: the full
    weights of `plan.full_modules` (every tensor of those modules, from the tuned checkpoint) and
    the lora_B.bias of layers whose bias changed (Δb, at the layers' scale 1)."""
    from ..formats.peft import CONFIG, WEIGHTS

    tensors: dict[str, tuple[np.ndarray, str]] = {}
    modules = set(plan.full_modules)
    for key in tuned.keys():
        if key.rpartition(".")[0] in modules and tuned.is_float(key):
            tensors[PEFT_PREFIX + key] = (tuned.get(key), tuned.dtype(key))
    for c in plan.lora_bias:
        assert c.base_key is not None
        delta = tuned.get(c.key).astype(np.float64) - base.get(c.base_key)  # (out,) exact in float64
        tensors[f"{PEFT_PREFIX}{c.module}.lora_B.bias"] = (round_to_dtype(delta, c.dtype), c.dtype)
    config = {
        "peft_type": "LORA",
        "modules_to_save": sorted(modules) or None,
        "lora_bias": bool(plan.lora_bias),
        "use_rslora": False,
        "bias": "none",
        "task_type": None,
    }
    write_text(folder / CONFIG, jsontext.dumps(config))
    write_safetensors_typed(folder / WEIGHTS[0], tensors, {"format": "pt"})
    return Adapter(
        format="peft", layers=(), loader=_no_layers, path=str(folder), config=config,
        modules_to_save=tuple(sorted(modules)),
    )  # fmt: skip
