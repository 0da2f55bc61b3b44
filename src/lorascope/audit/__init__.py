"""Audit: per-layer spectra of one adapter, metrics, and the rank suggestions that follow.

audit.py (the pass and the report), suggest.py (rank rounding and suggestion rules), policies.py
(the energy / erank / knee / oht rank policies), groups.py (module types and blocks), base.py and
norms.py (base-model weights and their exact norms, for the update-to-base ratios), render.py (text
and Markdown views; JSON is `AuditReport.to_json`), log.py (appending an audit to a run log).
"""

from ..rounding import Rounding
from .audit import AuditOptions, AuditReport, LayerReport, audit_adapter

__all__ = ["AuditOptions", "AuditReport", "LayerReport", "Rounding", "audit_adapter"]
