"""Rank rounding, the one rule shared by audit's suggestions and compress's plans.

`--rounding multiple:N` rounds a rank up to a multiple of N (the audit's default, N = 4: 5 → 8),
`pow2` up to a power of two (5 → 8, 9 → 16), `none` up to an integer only (26.2 → 27).  The same
text means the same thing in `lorascope audit` and `lorascope compress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidArgumentError


@dataclass(frozen=True)
class Rounding:
    """A rank rounding rule: every rank is rounded *up* to the next allowed value."""

    kind: str = "multiple"  # "multiple" | "pow2" | "none"
    step: int = 4

    @classmethod
    def parse(cls, text: str) -> Rounding:
        text = text.strip().lower()
        if text in ("none", "exact"):
            return cls("none", 1)
        if text in ("pow2", "power-of-two", "power_of_two"):
            return cls("pow2", 1)
        if text.startswith("multiple:"):
            try:
                step = int(text.split(":", 1)[1])
            except ValueError:
                step = 0
            if step >= 1:
                return cls("multiple", step)
        raise InvalidArgumentError(f"rounding must be 'multiple:N', 'pow2' or 'none', got {text!r}")

    def up(self, k: float) -> int:
        k = max(1, math.ceil(k - 1e-9))
        if self.kind == "pow2":
            return 1 << (k - 1).bit_length()
        if self.kind == "multiple":
            return self.step * math.ceil(k / self.step)
        return k

    def next_above(self, k: int) -> int:
        """The smallest allowed rank > k (the budget planner's next step)."""
        return self.up(k + 1)

    def __str__(self) -> str:
        return f"multiple:{self.step}" if self.kind == "multiple" else self.kind


EXACT = Rounding("none", 1)
