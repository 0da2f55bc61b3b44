"""The monitor's opt-in regime rule: does a run's early geometry match the regime it was labelled
with?  `lorascope monitor RUN.jsonl --regime-model MODEL --expect-regime NAME`.

The rule waits until the run has logged past the model's early window (the median last window
step of the runs the model was fitted on, so a live run is judged on the same steps as they were),
then classifies that window (logistic regression of the model file) and returns
* nothing while the window is not complete, or when the prediction is the expected regime;
* REGIME_MISMATCH (warning) when the early geometry matches another regime;
* REGIME_UNCHECKED (info) when the window cannot give the features (no geometry events, NaN, ...).
Same `Alert` type as the monitor's built-in rules, so text, JSON and --fail-on treat it alike.
"""

from __future__ import annotations

import math

from ..errors import FormatError, InvalidArgumentError
from ..monitor.rules import Alert
from .logs import read_run_data
from .model import RegimeModel, classify_run


def regime_alerts(path: str, model: RegimeModel, model_path: str, expected: str) -> list[Alert]:
    if expected not in model.classes:
        raise InvalidArgumentError(
            f"--expect-regime {expected!r} is not a regime of the model ({', '.join(model.classes)})",
            path=model_path,
        )
    run = read_run_data(path)
    end = model.window_end_median
    if math.isnan(end) or run.last_step is None:
        return []
    window_end = int(end)
    if run.last_step <= window_end:
        return []  # the early window is not complete yet
    try:
        c = classify_run(path, model, model_path, window_end=window_end)
    except FormatError as e:
        return [
            Alert(
                "REGIME_UNCHECKED",
                "info",
                f"the regime rule could not read the early window (steps ≤ {window_end}): {e.message}",
                window_end,
                {"window_end": window_end},
            )
        ]
    if c.regime == expected:
        return []
    p_got, p_exp = c.probabilities[c.regime], c.probabilities[expected]
    outside = f"; {len(c.out_of_range)} feature(s) outside the training range" if c.out_of_range else ""
    return [
        Alert(
            "REGIME_MISMATCH",
            "warning",
            f"early geometry (steps ≤ {window_end}) matches regime {c.regime} (p = {p_got:.2f}), "
            f"not the expected {expected} (p = {p_exp:.2f}){outside}",
            window_end,
            {
                "expected": expected,
                "predicted": c.regime,
                "probabilities": dict(c.probabilities),
                "centroid_distances": dict(c.distances),
                "window_end": window_end,
                "out_of_range": [f for f, *_ in c.out_of_range],
            },
        )
    ]
