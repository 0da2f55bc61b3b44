"""The closest single PEFT `add_weighted_adapter` call to a merge plan.

PEFT applies one `combination_type` and one `density` to every layer, so a per-layer plan can only
be approximated: we pick the method that carries the largest share of the update norm and the
norm-weighted mean of its layers' densities, and say how much of the plan that covers.  Mapping
(PEFT 0.21, `tuners/lora/model.py`): our exact `linear` is PEFT `cat` (PEFT's own `linear` mixes
A and B separately, needs equal ranks and adds cross terms); methods on ΔW are PEFT's `*_svd`
variants (`ties_svd`, `dare_ties_svd`, `dare_linear_svd`, `magnitude_prune_svd`, `svd`), whose
`weights` multiply ΔW as ours do.  Per-layer weights have no PEFT equivalent (noted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .audit import MergeAuditReport
    from .plan import MergePlan

PEFT_NAMES = {
    "linear": "cat",
    "svd": "svd",
    "ties": "ties_svd",
    "dare_ties": "dare_ties_svd",
    "dare_linear": "dare_linear_svd",
    "magnitude_prune": "magnitude_prune_svd",
}


def peft_equivalent(report: MergeAuditReport, plan: MergePlan) -> dict[str, Any]:
    share: dict[str, float] = {}
    dens: dict[str, list[tuple[float, float]]] = {}
    ranks: dict[str, int] = {}
    for x in report.layers:
        lp = plan.for_layer(x.name)
        w = max(x.metrics.norm1, x.metrics.norm2)
        share[lp.method] = share.get(lp.method, 0.0) + w
        if lp.density is not None:
            dens.setdefault(lp.method, []).append((w, lp.density))
        if lp.rank is not None:
            ranks[lp.method] = max(ranks.get(lp.method, 0), lp.rank)
    total = sum(share.values()) or 1.0
    method = max(share, key=lambda m: share[m])
    args: dict[str, Any] = {
        "adapters": ["adapter_1", "adapter_2"],
        "weights": list(plan.weights),
        "adapter_name": "merged",
        "combination_type": PEFT_NAMES.get(method, method),  # a method PEFT lacks keeps its own name
    }
    if dens.get(method):
        pairs = dens[method]
        args["density"] = round(sum(w * d for w, d in pairs) / (sum(w for w, _ in pairs) or 1.0), 4)
        args["majority_sign_method"] = "total"
    if method != "linear":
        args["svd_rank"] = ranks.get(method)
    covered = share[method] / total
    note = (
        f"PEFT applies one method to every layer: this call matches the plan on {100 * covered:.0f} % "
        "of the update norm; `lorascope merge --plan` applies every layer's own method, weights and rank"
    )
    return {"call": args, "coverage": round(covered, 4), "note": note}
