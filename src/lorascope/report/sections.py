"""The section registry: one module per kind of input, listed here explicitly.

A new kind is one module with a `SECTION = SectionKind(...)` (its schemas, marker files and
`build`) and its line below; `tests/test_report.py` runs its checks over the whole registry.
"""

from __future__ import annotations

from . import (
    audit_section,
    bench_section,
    gid_section,
    merge_section,
    regime_section,
    run_section,
    study_section,
    trial_section,
)
from .base import SectionKind


def _registry(*kinds: SectionKind) -> dict[str, SectionKind]:
    out: dict[str, SectionKind] = {}
    for kind in kinds:
        if kind.name in out:
            raise ValueError(f"section kind {kind.name!r} registered twice")
        out[kind.name] = kind
    return out


SECTIONS = _registry(
    audit_section.SECTION,
    merge_section.SECTION,
    run_section.SECTION,
    bench_section.SECTION,
    study_section.SECTION,
    gid_section.SECTION,
    regime_section.SECTION,
    trial_section.SECTION,
)
