"""lorascope: is your LoRA rank doing any work?

Public API (torch is never imported here):
    load(path) -> Adapter                 read any supported adapter lazily
    audit(adapter_or_path) -> AuditReport per-layer spectra, metrics, rank suggestions
"""

from .audit import AuditOptions, AuditReport, audit
from .errors import LorascopeError
from .formats import detect, load
from .types import Adapter, LayerInfo, LoraDelta

__version__ = "0.1.0"

__all__ = sorted(
    [
        "Adapter",
        "AuditOptions",
        "AuditReport",
        "LayerInfo",
        "LoraDelta",
        "LorascopeError",
        "__version__",
        "audit",
        "detect",
        "load",
    ]
)
