"""Natural order for layer names: `layers.2.q` before `layers.10.q` (digit runs compare as numbers).

Every list of layers lorascope shows (audit, merge-audit, merge, study, report) is sorted with
`natural_key`, so the same adapter's layers appear in the same order everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_RUNS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key: text runs compare as text, digit runs as integers (`"a.10"` after `"a.9"`).
    Each part is tagged (0: digits, 1: text) so mixed names never compare int with str."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _RUNS.split(name) if p)


def natural_sorted(names: Iterable[str]) -> list[str]:
    """`sorted(names, key=natural_key)`."""
    return sorted(names, key=natural_key)


__all__ = ["natural_key", "natural_sorted"]
