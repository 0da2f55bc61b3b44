"""Plans from a GID report: RaLoRA (blocks per layer), RaLoRA-Pro (rank and blocks), plain PEFT.

RaLoRA (rank r everywhere): n_l = 2^e, e = ⌊log₂(gid_l / r)⌋, clipped to 1 ≤ n_l ≤ n_max, then halved
until n_l divides both d_in and d_out (each halving is recorded in the layer's `note`).  A layer
then has r·(d_in + d_out) parameters, as a plain rank-r LoRA, and an equivalent rank n_l·r.

RaLoRA-Pro (reference rank r_ref): importance I_l = mean|W_l ⊙ G_l|, α_l = I_l / Σ I;
budget P = Σ_l √(d_in + d_out)·r_ref; r_l = ⌊P·α_l / √(d_in + d_out)⌋ clipped to [r_min, r_max];
then n_l as above with r_l.  The √ smoothing does not conserve parameters: the plan reports its
real count against plain LoRA at r_ref.

Plain PEFT (for users who cannot change layer types): a rank_pattern / alpha_pattern with the same
parameter budget as rank r_ref everywhere, moved toward layers with high gid × importance:
r_l ∝ gid_l·I_l / (d_in + d_out)-weighted share of the budget, floored, clipped to [r_min, r_max];
the scale alpha/r stays the reference one (alpha_l = r_l·alpha_ref/r_ref).  Flooring keeps the count
at or under the budget unless the r_min clip lifts it.

Everything here is arithmetic on the report's numbers; no torch.  Plans are `GidPlan`s (results.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from ..errors import InvalidArgumentError
from ..order import natural_sorted
from ..types import frozen_mapping
from .results import METHODS, PLAN_SCHEMA, GidPlan, GidReport, LayerGid, PeftPatterns, PlanLayer, PlanOptions

__all__ = [
    "METHODS",
    "PLAN_SCHEMA",
    "PlanOptions",
    "blocks_for",
    "make_plan",
    "peft_plan",
    "pro_ranks",
    "ralora_plan",
    "ralora_pro_plan",
]


def blocks_for(gid: float, r: int, d_in: int, d_out: int, n_max: int = 32) -> tuple[int, str | None]:
    """(n_l, note): the largest power of two ≤ gid/r, clipped to [1, n_max], halved until it divides
    both dimensions; the note says when (and from what) it was reduced."""
    e = math.floor(math.log2(gid / r)) if gid > r else 0
    n = max(1, min(2**e, n_max))
    want = n
    while n > 1 and (d_in % n or d_out % n):
        n //= 2
    note = (
        f"blocks reduced from {want} to {n}: {want} does not divide ({d_out}, {d_in})" if n != want else None
    )
    return n, note


def _entry(x: LayerGid, r: int, n: int, options: PlanOptions, note: str | None) -> PlanLayer:
    out, inn = x.shape
    return PlanLayer(
        r=r,
        blocks=n,
        lora_alpha=options.alpha_per_rank * r,
        shape=(out, inn),
        equivalent_rank=n * r,
        params=r * (out + inn),
        gid=float(x.gid),
        note=note,
    )


def ralora_plan(layers: Sequence[LayerGid], options: PlanOptions) -> GidPlan:
    options.check()
    table = {}
    for x in layers:
        out, inn = x.shape
        n, note = blocks_for(float(x.gid), options.rank, inn, out, options.n_max)
        table[x.name] = _entry(x, options.rank, n, options, note)
    return _plan("ralora", table, layers, options)


def pro_ranks(layers: Sequence[LayerGid], options: PlanOptions) -> dict[str, int]:
    """RaLoRA-Pro's r_l per layer (module docstring)."""
    total = sum(float(x.importance) for x in layers)
    if not total > 0:
        raise InvalidArgumentError("RaLoRA-Pro needs a positive importance in at least one layer (all are 0)")
    sizes = {x.name: math.sqrt(sum(x.shape)) for x in layers}
    budget = sum(sizes.values()) * options.rank
    out = {}
    for x in layers:
        r = math.floor(budget * float(x.importance) / total / sizes[x.name])
        out[x.name] = min(max(r, options.r_min), options.r_max)
    return out


def ralora_pro_plan(layers: Sequence[LayerGid], options: PlanOptions) -> GidPlan:
    options.check()
    ranks = pro_ranks(layers, options)
    table = {}
    for x in layers:
        out, inn = x.shape
        n, note = blocks_for(float(x.gid), ranks[x.name], inn, out, options.n_max)
        table[x.name] = _entry(x, ranks[x.name], n, options, note)
    return _plan("ralora-pro", table, layers, options)


def peft_plan(layers: Sequence[LayerGid], options: PlanOptions) -> GidPlan:
    """Plain LoRA ranks moved toward high gid × importance layers under the rank-r_ref budget."""
    options.check()
    score = {x.name: float(x.gid) * float(x.importance) for x in layers}
    total = sum(score.values())
    if not total > 0:
        raise InvalidArgumentError("the PEFT plan needs a layer with positive gid × importance (all are 0)")
    budget = sum(options.rank * sum(x.shape) for x in layers)
    table = {}
    for x in layers:
        r = math.floor(budget * score[x.name] / total / sum(x.shape))
        table[x.name] = _entry(x, min(max(r, options.r_min), options.r_max), 1, options, None)
    default = options.rank
    peft = PeftPatterns(
        r=default,
        lora_alpha=options.alpha_per_rank * default,
        target_modules=tuple(natural_sorted(table)),  # layers.2 before layers.10
        rank_pattern=frozen_mapping({k: v.r for k, v in table.items() if v.r != default}),
        alpha_pattern=frozen_mapping({k: v.lora_alpha for k, v in table.items() if v.r != default}),
    )
    return _plan("peft", table, layers, options, peft)


def _plan(
    method: str,
    table: dict[str, PlanLayer],
    layers: Sequence[LayerGid],
    options: PlanOptions,
    peft: PeftPatterns | None = None,
) -> GidPlan:
    lora = sum(options.rank * sum(x.shape) for x in layers)
    params = sum(v.r * sum(v.shape) for v in table.values())
    return GidPlan(
        schema=PLAN_SCHEMA,
        method=method,
        options=options,
        params=params,
        lora_params=lora,
        params_vs_lora=params / lora if lora else 0.0,
        layers=frozen_mapping(table),
        peft=peft,
    )


PLANS: dict[str, Callable[[Sequence[LayerGid], PlanOptions], GidPlan]] = {
    "ralora": ralora_plan,
    "ralora-pro": ralora_pro_plan,
    "peft": peft_plan,
}


def make_plan(report: GidReport, method: str, options: PlanOptions | None = None) -> GidPlan:
    """The `method` plan (one of METHODS) for a GID report; the plan records the report's model."""
    if method not in PLANS:
        raise InvalidArgumentError(f"unknown plan method {method!r}; choose from {', '.join(METHODS)}")
    plan = PLANS[method](report.layers, options or PlanOptions())
    return dataclasses.replace(plan, model=report.model)
