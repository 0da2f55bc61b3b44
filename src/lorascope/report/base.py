"""What a report section is: `SectionKind` (how an input is recognised and built) and `Built`
(what one input became: its JSON, headline facts and HTML body)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Built:
    data: Any  # the JSON the section's numbers come from; embedded verbatim in the page
    facts: list[tuple[str, Any]]  # headline facts for the summary table and the section top
    body: str  # HTML: figures, each with its table
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SectionKind:
    name: str  # the kind, also the CSS class of its <section>
    title: str
    schemas: tuple[str, ...]  # `schema` prefixes (before "/v") of JSON files this kind reads
    files: tuple[str, ...]  # file names that mark this kind (inside a directory, or the file itself)
    # (path, parsed JSON document or None) -> Built.  None: the path is not a JSON file (an
    # adapter, a run log, a directory).
    build: Callable[[str, Any], Built]
