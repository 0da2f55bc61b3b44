"""lorascope: is your LoRA rank doing any work?

Public API, loaded lazily: `import lorascope` imports nothing heavy (no numpy until a name below is
used; torch only for `LorascopeCallback`).  No public name is also a module name, so
`import lorascope.compress` gives the capability package and `lorascope.compress_adapter` the function.

    load(path) -> Adapter                       read any supported adapter lazily (detect: its format)
    audit_adapter(adapter_or_path) -> AuditReport   per-layer spectra, metrics, rank suggestions
    plan_ranks(report, mode) -> dict            new rank per layer (RankMode: rank, energy, budget, ...)
    compress_adapter(adapter, plan) -> Adapter  per-layer truncated SVD; compress_file writes it
    convert_file(src, dest, to=...)             rewrite a LoRA in another format (FORMATS), ΔW exact
    merge_audit(a, b) -> MergeAuditReport       pairwise interference per layer, verdicts, a merge plan
    merge_files([a, b, ...], dest, plan)        N adapters → one LoRA adapter, checked against the exact ΔW
                                                (merge_adapters: the same in memory)
    check_config(CheckInput) -> [Finding]       pre-flight LoRA config / training-args findings
    monitor_run(run.jsonl) -> MonitorReport     run-log summary and rule alerts; RunWriter writes logs
    run_study(sources, out) -> StudyResult      audit many adapters into journals and tables (StudyOptions)
    build_report([inputs], title) -> ReportPage one self-contained HTML page (.html) with plots
    LorascopeCallback                           HF Trainer callback (imports torch on first access)
    run_bench(load_bench_config(path), BenchOptions(out=...)) -> BenchResult
                                                probe → audit → retrain → evaluate over seeds (torch)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> module that defines it (imported on first access)
_API = {
    "Adapter": ".types",
    "LayerInfo": ".types",
    "LoraDelta": ".types",
    "LorascopeError": ".errors",
    "load": ".formats",
    "detect": ".formats",
    "AuditOptions": ".audit",
    "AuditReport": ".audit",
    "audit_adapter": ".audit",
    "CompressOptions": ".compress",
    "CompressReport": ".compress",
    "RankMode": ".compress",
    "compress_adapter": ".compress",
    "compress_file": ".compress",
    "plan_ranks": ".compress",
    "convert_file": ".convert",
    "MergeAuditReport": ".merge",
    "MergePlan": ".merge",
    "MergeReport": ".merge",
    "merge_adapters": ".merge",
    "merge_audit": ".merge",
    "merge_files": ".merge",
    "CheckInput": ".check",
    "check_config": ".check",
    "MonitorReport": ".monitor",
    "Thresholds": ".monitor",
    "monitor_run": ".monitor",
    "RunWriter": ".telemetry",
    "read_run": ".telemetry",
    "StudyOptions": ".study",
    "StudyResult": ".study",
    "run_study": ".study",
    "build_report": ".report",
    "LorascopeCallback": ".integrations.hf",
    "BenchOptions": ".bench",
    "load_bench_config": ".bench",
    "run_bench": ".bench",
}


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .audit import AuditOptions, AuditReport, audit_adapter
    from .bench import BenchOptions, load_bench_config, run_bench
    from .check import CheckInput, check_config
    from .compress import (
        CompressOptions,
        CompressReport,
        RankMode,
        compress_adapter,
        compress_file,
        plan_ranks,
    )
    from .convert import convert_file
    from .errors import LorascopeError
    from .formats import detect, load
    from .integrations.hf import LorascopeCallback
    from .merge import MergeAuditReport, MergePlan, MergeReport, merge_adapters, merge_audit, merge_files
    from .monitor import MonitorReport, Thresholds, monitor_run
    from .report import build_report
    from .study import StudyOptions, StudyResult, run_study
    from .telemetry import RunWriter, read_run
    from .types import Adapter, LayerInfo, LoraDelta

# a literal list (linters read it); tests/test_layout.py checks it equals the table above
__all__ = [
    "Adapter",
    "AuditOptions",
    "AuditReport",
    "BenchOptions",
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
    "StudyOptions",
    "StudyResult",
    "Thresholds",
    "__version__",
    "audit_adapter",
    "build_report",
    "check_config",
    "compress_adapter",
    "compress_file",
    "convert_file",
    "detect",
    "load",
    "load_bench_config",
    "merge_adapters",
    "merge_audit",
    "merge_files",
    "monitor_run",
    "plan_ranks",
    "read_run",
    "run_bench",
    "run_study",
]
