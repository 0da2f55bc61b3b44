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

Everything here is arithmetic on the report's numbers; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError

PLAN_SCHEMA = "lorascope.gid-plan/v1"
METHODS = ("ralora", "ralora-pro", "peft")


@dataclass(frozen=True)
class PlanOptions:
    rank: int = 8  # r (RaLoRA) or r_ref (RaLoRA-Pro, PEFT)
    alpha: float | None = None  # lora_alpha at `rank`; default 2·rank
    n_max: int = 32
    r_min: int = 1
    r_max: int = 64

    def check(self) -> None:
        if self.rank < 1 or self.n_max < 1 or not 1 <= self.r_min <= self.r_max:
            raise InvalidArgumentError(
                f"plan options need rank ≥ 1, n_max ≥ 1 and 1 ≤ r_min ≤ r_max (got rank={self.rank}, "
                f"n_max={self.n_max}, r_min={self.r_min}, r_max={self.r_max})"
            )


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


def _shape(layer: Mapping[str, Any]) -> tuple[int, int]:
    out, inn = layer["shape"]
    return int(out), int(inn)


def _entry(
    r: int, n: int, alpha_per_rank: float, out: int, inn: int, gid: float, note: str | None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"r": r, "blocks": n, "lora_alpha": alpha_per_rank * r, "shape": [out, inn]}
    entry.update(equivalent_rank=n * r, params=r * (out + inn), gid=gid)
    if note:
        entry["note"] = note
    return entry


def ralora_plan(layers: Sequence[Mapping[str, Any]], options: PlanOptions) -> dict[str, Any]:
    options.check()
    per_rank = (options.alpha if options.alpha is not None else 2.0 * options.rank) / options.rank
    table = {}
    for x in layers:
        out, inn = _shape(x)
        n, note = blocks_for(float(x["gid"]), options.rank, inn, out, options.n_max)
        table[x["name"]] = _entry(options.rank, n, per_rank, out, inn, float(x["gid"]), note)
    return _plan("ralora", table, layers, options)


def pro_ranks(layers: Sequence[Mapping[str, Any]], options: PlanOptions) -> dict[str, int]:
    """RaLoRA-Pro's r_l per layer (module docstring)."""
    total = sum(float(x["importance"]) for x in layers)
    if not total > 0:
        raise InvalidArgumentError("RaLoRA-Pro needs a positive importance in at least one layer (all are 0)")
    sizes = {x["name"]: math.sqrt(sum(_shape(x))) for x in layers}
    budget = sum(sizes.values()) * options.rank
    out = {}
    for x in layers:
        r = math.floor(budget * float(x["importance"]) / total / sizes[x["name"]])
        out[x["name"]] = min(max(r, options.r_min), options.r_max)
    return out


def ralora_pro_plan(layers: Sequence[Mapping[str, Any]], options: PlanOptions) -> dict[str, Any]:
    options.check()
    per_rank = (options.alpha if options.alpha is not None else 2.0 * options.rank) / options.rank
    ranks = pro_ranks(layers, options)
    table = {}
    for x in layers:
        out, inn = _shape(x)
        r = ranks[x["name"]]
        n, note = blocks_for(float(x["gid"]), r, inn, out, options.n_max)
        table[x["name"]] = _entry(r, n, per_rank, out, inn, float(x["gid"]), note)
    return _plan("ralora-pro", table, layers, options)


def peft_plan(layers: Sequence[Mapping[str, Any]], options: PlanOptions) -> dict[str, Any]:
    """Plain LoRA ranks moved toward high gid × importance layers under the rank-r_ref budget."""
    options.check()
    per_rank = (options.alpha if options.alpha is not None else 2.0 * options.rank) / options.rank
    score = {x["name"]: float(x["gid"]) * float(x["importance"]) for x in layers}
    total = sum(score.values())
    if not total > 0:
        raise InvalidArgumentError("the PEFT plan needs a layer with positive gid × importance (all are 0)")
    budget = sum(options.rank * sum(_shape(x)) for x in layers)
    table = {}
    for x in layers:
        out, inn = _shape(x)
        r = min(
            max(math.floor(budget * score[x["name"]] / total / (out + inn)), options.r_min), options.r_max
        )
        table[x["name"]] = _entry(r, 1, per_rank, out, inn, float(x["gid"]), None)
    plan = _plan("peft", table, layers, options)
    default = options.rank
    plan["peft"] = {
        "r": default,
        "lora_alpha": per_rank * default,
        "target_modules": sorted(table),
        "rank_pattern": {k: v["r"] for k, v in table.items() if v["r"] != default},
        "alpha_pattern": {k: v["lora_alpha"] for k, v in table.items() if v["r"] != default},
    }
    return plan


def _plan(
    method: str, table: dict[str, Any], layers: Sequence[Mapping[str, Any]], options: PlanOptions
) -> dict[str, Any]:
    lora = sum(options.rank * sum(_shape(x)) for x in layers)
    params = sum(v["params"] for v in table.values())
    return {
        "schema": PLAN_SCHEMA,
        "method": method,
        "options": {
            "rank": options.rank,
            "alpha": options.alpha,
            "n_max": options.n_max,
            "r_min": options.r_min,
            "r_max": options.r_max,
        },
        "params": params,
        "lora_params": lora,
        "params_vs_lora": params / lora if lora else 0.0,
        "layers": table,
    }


PLANS = {"ralora": ralora_plan, "ralora-pro": ralora_pro_plan, "peft": peft_plan}


def make_plan(report: Mapping[str, Any], method: str, options: PlanOptions | None = None) -> dict[str, Any]:
    """The `method` plan (one of METHODS) for a gid.json report; the plan records the report's model."""
    if method not in PLANS:
        raise InvalidArgumentError(f"unknown plan method {method!r}; choose from {', '.join(METHODS)}")
    plan = PLANS[method](report["layers"], options or PlanOptions())
    plan["model"] = report.get("model")
    return plan
