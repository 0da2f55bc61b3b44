"""lorascope: is your LoRA rank doing any work?

Public API (torch is never imported here):
    load(path) -> Adapter                 read any supported adapter lazily
    audit(adapter_or_path) -> AuditReport per-layer spectra, metrics, rank suggestions
    plan_ranks(report, mode) -> dict      new rank per layer (RankMode: rank, energy, budget, ...)
    compress(adapter, plan) -> Adapter    per-layer truncated SVD; compress_file writes it
    convert(src, dest, to=...)            rewrite a LoRA as peft / kohya / diffusers, ΔW exact
    merge_audit(a, b) -> MergeAuditReport pairwise interference per layer, verdicts, a merge plan
    merge_files([a, b, ...], dest, plan)  N adapters → one LoRA adapter, checked against the exact ΔW
                                          (merge_adapters: the same in memory; lorascope.merge: the package)
    check(CheckInput) -> [Finding]        pre-flight LoRA config / training-args findings
    monitor(run.jsonl) -> MonitorReport   run-log summary and rule alerts; RunWriter writes logs
    LorascopeCallback                     HF Trainer callback (lazy: imports torch on first access)
"""

from .audit import AuditOptions, AuditReport, audit
from .check import CheckInput, check
from .compress import CompressOptions, CompressReport, compress, compress_file
from .convert import convert
from .errors import LorascopeError
from .formats import detect, load
from .merge import MergeAuditReport, MergePlan, MergeReport, merge_adapters, merge_audit, merge_files
from .monitor import MonitorReport, Thresholds, monitor
from .plan import RankMode, plan_ranks
from .telemetry import RunWriter, read_run
from .types import Adapter, LayerInfo, LoraDelta

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LorascopeCallback":  # torch/transformers only when asked for
        from .telemetry.callback import LorascopeCallback

        return LorascopeCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Adapter",
    "AuditOptions",
    "AuditReport",
    "CheckInput",
    "CompressOptions",
    "CompressReport",
    "LayerInfo",
    "LoraDelta",
    "LorascopeCallback",
    "LorascopeError",
    "MergeAuditReport",
    "MergePlan",
    "MergeReport",
    "MonitorReport",
    "RankMode",
    "RunWriter",
    "Thresholds",
    "__version__",
    "audit",
    "check",
    "compress",
    "compress_file",
    "convert",
    "detect",
    "load",
    "merge_adapters",
    "merge_audit",
    "merge_files",
    "monitor",
    "plan_ranks",
    "read_run",
]
