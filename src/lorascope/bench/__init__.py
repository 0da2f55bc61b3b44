"""Bench: turn an audit's rank suggestion into evidence.  Per seed: train a probe LoRA, gate on its
quality, audit it, retrain candidate ranks from scratch (and the truncate controls), evaluate on
held-out data, give verdicts; then aggregate over seeds under an explicit safety policy.

config.py (the typed, validated config and presets.py), data.py / rt.py (the fixed split),
variants.py (rank plans from the audit, no torch), train.py (Trainer + PEFT, the only torch
importer), setup.py (checks before any write), store.py (crash-safe stages), stages.py (one
stage's work, in any process), protocol.py (the run), executor.py (stages as Ray tasks),
results.py (the frozen typed results), aggregate.py (verdicts, policy; pure), render.py (Markdown),
progress.py (stderr), quiet.py (transformers' own output off).  Importing this package
imports no torch.
"""

from __future__ import annotations

from typing import Any

from .aggregate import aggregate, validation_level, verdict
from .config import BenchConfig, load_config, with_overrides
from .results import BenchResult, SeedResult, VariantResult
from .setup import BenchOptions

load_bench_config = load_config  # the public name (lorascope.load_bench_config)

__all__ = [
    "BenchConfig",
    "BenchOptions",
    "BenchResult",
    "SeedResult",
    "VariantResult",
    "aggregate",
    "load_bench_config",
    "load_config",
    "run_bench",
    "validation_level",
    "verdict",
    "with_overrides",
]


def __getattr__(name: str) -> Any:
    if name == "Bench":
        from . import protocol

        return protocol.Bench
    raise AttributeError(name)


def run_bench(cfg: BenchConfig, opts: BenchOptions) -> BenchResult:
    """Run the whole bench (see protocol.py); returns the aggregate result (`to_json()` is
    bench_aggregate.json)."""
    from .protocol import Bench

    return Bench(cfg, opts).run()
