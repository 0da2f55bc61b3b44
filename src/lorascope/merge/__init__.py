"""Merging adapters: predict interference (`merge_audit`), then merge by a plan (`merge`, `merge_files`).

Modules: pairwise.py (geometry of two updates from their factors), verdict.py (verdicts and
recommendations), audit.py (the report), plan.py (the plan file), methods.py (the method registry:
pure functions over arrays), execute.py (N adapters → one, with the post-merge check),
peft_args.py (the closest PEFT add_weighted_adapter call), render.py (text views).
"""

from .audit import MergeAuditOptions, MergeAuditReport, merge_audit
from .execute import MergeOptions, MergeReport, merge_adapters, merge_files
from .methods import METHODS, MergeMethod, get_method
from .pairwise import PairMetrics, PairOptions, pair_metrics
from .plan import LayerPlan, MergePlan, load_plan, save_plan
from .verdict import Thresholds

__all__ = [
    "LayerPlan",
    "METHODS",
    "MergeAuditOptions",
    "MergeAuditReport",
    "MergeMethod",
    "MergeOptions",
    "MergePlan",
    "MergeReport",
    "PairMetrics",
    "PairOptions",
    "Thresholds",
    "get_method",
    "load_plan",
    "merge_adapters",
    "merge_audit",
    "merge_files",
    "pair_metrics",
    "save_plan",
]
