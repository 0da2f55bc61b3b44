"""lorascope: is your LoRA rank doing any work?

Public API (torch is never imported here):
    load(path) -> Adapter                 read any supported adapter lazily
    audit(adapter_or_path) -> AuditReport per-layer spectra, metrics, rank suggestions
    plan_ranks(report, mode) -> dict      new rank per layer (RankMode: rank, energy, budget, ...)
    compress(adapter, plan) -> Adapter    per-layer truncated SVD; compress_file writes it
    convert(src, dest, to=...)            rewrite a LoRA as peft / kohya / diffusers, ΔW exact
"""

from .audit import AuditOptions, AuditReport, audit
from .compress import CompressOptions, CompressReport, compress, compress_file
from .convert import convert
from .errors import LorascopeError
from .formats import detect, load
from .plan import RankMode, plan_ranks
from .types import Adapter, LayerInfo, LoraDelta

__version__ = "0.1.0"

__all__ = sorted(
    [
        "Adapter",
        "AuditOptions",
        "AuditReport",
        "CompressOptions",
        "CompressReport",
        "LayerInfo",
        "LoraDelta",
        "LorascopeError",
        "RankMode",
        "__version__",
        "audit",
        "compress",
        "compress_file",
        "convert",
        "detect",
        "load",
        "plan_ranks",
    ]
)
