"""Accuracy of the spectral core against a dense float64 SVD of the stored values.

    python benchmarks/bench_accuracy.py [--layers 2000] [--seed 0]

Random layers: shapes up to 120×120, r ≤ 32, factors stored as fp64/fp32/fp16/bf16 (the dense
reference uses exactly the stored values), spectra flat to decaying by 10× per direction, B's
columns correlated or not.  Reports, over all layers: the max relative error of σᵢ ≥ 1e-3·σ₁, the
max absolute error (in units of σ₁) below that, and the max relative error of every metric
(metrics.compute) against the same formulas on the dense singular values.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from lorascope import metrics
from lorascope.spectral import lora_singular_values
from lorascope.types import round_to_dtype

DTYPES = ("fp64", "fp32", "fp16", "bf16")


def random_layer(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, str]:
    out, inn, r = int(rng.integers(1, 121)), int(rng.integers(1, 121)), int(rng.integers(1, 33))
    decay = float(rng.choice([1.0, 0.9, 0.7, 0.5, 0.1]))
    a = rng.standard_normal((r, inn))
    b = rng.standard_normal((out, r)) * decay ** np.arange(r)
    if rng.random() < 0.3:  # correlated columns of B: an ill-conditioned Gram, as trained B's have
        b = b @ (np.eye(r) + 0.9 * rng.standard_normal((r, r)) / np.sqrt(r))
    dtype = str(rng.choice(DTYPES))
    a, b = (round_to_dtype(x, dtype) if dtype != "fp64" else x for x in (a, b))
    return np.asarray(a), np.asarray(b), float(rng.choice([1.0, 0.125, 2.0, -0.5])), dtype


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    worst_rel = worst_abs = 0.0
    worst_metric: dict[str, float] = {}
    for _ in range(args.layers):
        a, b, scale, _ = random_layer(rng)
        r = a.shape[0]
        ours = lora_singular_values(a, b, scale)  # (r,)
        dense = np.linalg.svd(scale * b.astype(np.float64) @ a.astype(np.float64), compute_uv=False)
        truth = np.zeros(r)
        truth[: min(r, dense.size)] = dense[:r]
        if truth[0] == 0:
            continue
        big = truth >= 1e-3 * truth[0]
        worst_rel = max(worst_rel, float(np.max(np.abs(ours[big] - truth[big]) / truth[big])))
        if (~big).any():
            worst_abs = max(worst_abs, float(np.max(np.abs(ours[~big] - truth[~big])) / truth[0]))
        got = metrics.compute(metrics.Spectrum(ours, r), (0.9, 0.99))
        want = metrics.compute(metrics.Spectrum(truth, r), (0.9, 0.99))
        for key, value in want.items():
            err = abs(got[key] - value) / max(abs(value), 1e-300)
            worst_metric[key] = max(worst_metric.get(key, 0.0), err)
    print(f"{args.layers} random layers (fp64/fp32/fp16/bf16, r ≤ 32, up to 120×120)")
    print(f"max relative error, σᵢ ≥ 1e-3·σ₁:   {worst_rel:.2e}")
    print(f"max absolute error below, in σ₁:    {worst_abs:.2e}")
    for key, err in worst_metric.items():
        print(f"max relative error {key:<22} {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
