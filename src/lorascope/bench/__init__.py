"""Bench: turn an audit's rank suggestion into evidence.  Per seed: train a probe LoRA, gate on its
quality, audit it, retrain candidate ranks from scratch (and the truncate controls), evaluate on
held-out data, give verdicts; then aggregate over seeds under an explicit safety policy.

config.py (the validated config and presets.py), data.py / rt.py (the fixed split), variants.py
(rank plans from the audit, no torch), train.py (Trainer + PEFT, the only torch importer),
store.py (crash-safe stages), protocol.py (the run), aggregate.py (verdicts, policy; pure),
render.py (Markdown), progress.py (stderr).  Importing this package imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .aggregate import aggregate, validation_level, verdict
from .config import BenchConfig, load_config, with_overrides

load_bench_config = load_config  # the public name (lorascope.load_bench_config)

if TYPE_CHECKING:
    from .protocol import BenchOptions

__all__ = [
    "BenchConfig",
    "BenchOptions",
    "aggregate",
    "load_bench_config",
    "load_config",
    "run_bench",
    "validation_level",
    "verdict",
    "with_overrides",
]


def __getattr__(name: str) -> Any:
    if name in ("BenchOptions", "Bench"):
        from . import protocol

        return getattr(protocol, name)
    raise AttributeError(name)


def run_bench(cfg: BenchConfig, opts: BenchOptions) -> dict[str, Any]:
    """Run the whole bench (see protocol.py); returns the aggregate document."""
    from .protocol import Bench

    return Bench(cfg, opts).run()
