"""Run summary: final losses, perplexities, gap, accuracies and the spectral trend (pure)."""

from __future__ import annotations

import math
from typing import Any

from .series import RunSeries


def _ppl(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def _spectral(s: RunSeries) -> dict[str, Any]:
    sp = s.spectra
    if not sp.n:
        return {"n_snapshots": 0}
    last_util = sp.means[1]
    trend = None if sp.first_util is None or last_util is None else last_util - sp.first_util
    return {
        "n_snapshots": sp.n,
        "n_layers": sp.n_layers,
        "mean_stable_rank": sp.means[0],
        "mean_utilisation": last_util,
        "mean_top1_share": sp.means[2],
        "utilisation_change": trend,  # last − first non-dead snapshot
        "utilisation_trend": [[st, u] for st, u in sp.trend],
    }


def summarise(s: RunSeries) -> dict[str, Any]:
    """The summary, with the window of the thresholds the series was built with."""
    train_loss = s.train_loss()
    held = s.heldout()
    last_eval = dict(held.last_metrics) if held else {}
    eval_loss = last_eval.get("loss")
    eval_ppl = last_eval.get("ppl") if last_eval.get("ppl") is not None else _ppl(eval_loss)
    train_ppl = s.train_ppl()
    return {
        "run_id": s.run_id,
        "model": s.meta.get("model"),
        "dataset": s.meta.get("dataset"),
        "status": s.end_status,
        "last_step": s.max_train_step,
        "n_train_points": s.n_train,
        "n_evals": held.n if held else 0,
        "final_train_loss": train_loss,
        "train_ppl": train_ppl,
        "final_eval_loss": eval_loss,
        "eval_ppl": eval_ppl,
        "gap_ratio": eval_ppl / train_ppl if eval_ppl is not None and train_ppl else None,
        "final_eval_accuracy": held.final_accuracy if held else None,
        "best_eval_accuracy": held.best_accuracy if held else None,
        "final_eval_metrics": last_eval,
        "spectral": _spectral(s),
    }
