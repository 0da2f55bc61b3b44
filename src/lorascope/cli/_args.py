"""Small argument parsers shared by several commands."""

from __future__ import annotations

import math

from ..errors import InvalidArgumentError


def parse_weights(text: str, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InvalidArgumentError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"--weights needs {n} finite numbers (one per adapter), got {text!r}")
    return values
