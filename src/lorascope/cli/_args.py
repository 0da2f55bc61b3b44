"""Small argument parsers shared by several commands."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..errors import InvalidArgumentError


def parse_weights(text: str, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise InvalidArgumentError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"--weights needs {n} finite numbers (one per adapter), got {text!r}")
    return values


def output_option(p: argparse.ArgumentParser, help: str, dest: str = "output", **kw: Any) -> None:
    """The command's output: `-o`, `--out` and `--output` name one option (stored in `dest`)."""
    longs = ("--out", "--output") if dest == "out" else ("--output", "--out")
    p.add_argument("-o", *longs, dest=dest, help=help, **kw)
