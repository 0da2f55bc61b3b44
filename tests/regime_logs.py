"""Synthetic run logs with geometry events, written line by line (no lorascope code involved), for
the regime tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SCHEMA = "lorascope.telemetry/v1"
REGIMES = ("baseline", "high_lr", "high_wd", "low_lr", "low_wd")
# regime -> (weight-norm growth, grad norm, cosine, loss level, spectral smoothing)
_SHAPE = {
    "baseline": (1.0, 1.0, -0.10, 2.0, 0.9),
    "high_lr": (3.0, 2.5, -0.30, 2.6, 0.3),
    "high_wd": (0.4, 1.2, -0.20, 2.1, 0.85),
    "low_lr": (0.2, 0.6, -0.02, 2.9, 0.97),
    "low_wd": (1.3, 0.9, -0.05, 1.9, 0.9),
}


def record(event: str, step: int | None, run_id: str = "r", **payload) -> str:
    return json.dumps(
        {"schema": SCHEMA, "ts": 1.0, "run_id": run_id, "event": event, "step": step, **payload}
    )


def geometry(step: int, run_id: str = "r", **values) -> str:
    base = {
        "weight_norm": 10.0,
        "grad_norm": 1.0,
        "grad_norm_preclip": None,
        "cos_grad_weight": 0.0,
        "grad_to_weight_ratio": 0.1,
        "spectral_complexity": 0.5,
        "n_params": 1000,
        "scope": "full",
        "loss": 2.0,
    }
    base.update(values)
    return record("geometry", step, run_id, **base)


def write_lines(path: Path, lines: list[str], newline: bool = True) -> Path:
    path.write_text("\n".join(lines) + ("\n" if newline else ""), encoding="utf-8")
    return path


def regime_run(path: Path, regime: str, seed: int, steps: int = 400, every: int = 10) -> Path:
    """A run whose early geometry depends on its regime (and, a little, on its seed)."""
    growth, grad, cos, loss0, smooth = _SHAPE[regime]
    rng = np.random.default_rng(1000 * seed + REGIMES.index(regime))
    run_id = f"{regime}-{seed}"
    lines = [
        record("run_start", None, run_id, meta={"regime": regime, "seed": seed, "model": "tiny"}),
        record("config", None, run_id, lora={}, training={"lr": 1e-3}),
    ]
    sc = 0.5
    for step in range(0, steps + 1, every):
        u = step / steps
        w = 10.0 + growth * u + 0.5 * growth * u * u + rng.normal(0, 0.02)
        g = grad * (1 + 0.1 * rng.normal())
        sc = smooth * sc + (1 - smooth) * 0.5 + 0.02 * rng.normal()
        loss = loss0 * math.exp(-u) + 0.05 * rng.normal()
        lines.append(record("train_step", step, run_id, loss=loss, lr=1e-3, grad_norm=g))
        lines.append(
            geometry(
                step,
                run_id,
                weight_norm=w,
                grad_norm=g,
                cos_grad_weight=cos + 0.02 * rng.normal(),
                grad_to_weight_ratio=g / w,
                spectral_complexity=sc,
                loss=loss,
            )
        )
    lines.append(record("run_end", steps, run_id, status="ok"))
    return write_lines(path, lines)


def regime_runs(folder: Path, seeds: int = 3, regimes=REGIMES, steps: int = 400) -> list[str]:
    return [
        str(regime_run(folder / f"{r}-{s}.jsonl", r, s, steps=steps))
        for s in range(1, seeds + 1)
        for r in regimes
    ]
