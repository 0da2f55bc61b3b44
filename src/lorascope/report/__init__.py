"""`lorascope report`: one self-contained HTML page with plots for every result lorascope writes.

    page = build_report(["adapter_dir", "run.jsonl", "merge_audit.json"], title="My run")
    page.html                         # the document; write_report(...) writes it atomically
    page.parts[0].built.data          # the JSON behind section 1 (embedded in the page too)

Inputs (inputs.py decides): an adapter (audited on the fly), an audit JSON, a merge-audit JSON, a
run log, a bench directory, a study directory, a gid.json, a regime.json, the fair test's summary
(schema `lorascope.gid-trial/v1`, examples/fair_summary.py).  All inputs are read and checked before
anything is written; an input that cannot be read raises the error the command that reads it
raises, prefixed with its position when there are several ("input 2 of 3: …").

Modules: base.py (what a section is), sections.py (the registry), one `*_section.py` per kind,
fields.py (typed JSON access with key-naming errors), plot.py (matplotlib → inline SVG), svg.py
(the audit's figures written as SVG text: an adapter's report never imports matplotlib), html.py
(escaping, tables, figures), page.py (the document, its CSS, CSP and embedded JSON).
Deliberately left out: JavaScript plotting (the SVGs are static; hover highlighting is CSS), and
any fetch at view time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError, LorascopeError
from .inputs import classify
from .page import Part, render


@dataclass(frozen=True)
class ReportPage:
    title: str
    parts: tuple[Part, ...]
    html: str


def build_report(inputs: Sequence[str], title: str = "lorascope report") -> ReportPage:
    """Read every input, build its section, render the page.  Raises on the first bad input."""
    from .sections import SECTIONS

    if not inputs:
        raise InvalidArgumentError("report needs at least one input")
    parts = []
    for i, path in enumerate(inputs, 1):
        try:
            kind, doc = classify(str(path), SECTIONS)
            parts.append(Part(kind, str(path), kind.build(str(path), doc)))
        except LorascopeError as e:
            if len(inputs) > 1:  # same message as the reading command, plus which input it was
                e.args = (f"input {i} of {len(inputs)}: {e}",)
            raise
    return ReportPage(title=title, parts=tuple(parts), html=render(title, parts))


__all__ = ["ReportPage", "build_report"]
