"""Run summary: final losses, perplexities, gap, accuracies and the spectral trend (pure)."""

from __future__ import annotations

import math
from typing import Any

from .series import RunSeries


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _ppl(loss: float | None) -> float | None:
    return math.exp(min(loss, 50.0)) if loss is not None else None


def _spectral(s: RunSeries) -> dict[str, Any]:
    if not s.spectra:
        return {"n_snapshots": 0}
    means = []
    for snap in s.spectra:
        live = [lp for lp in snap.layers if not lp.dead]
        means.append(
            (
                snap.step,
                _mean([lp.stable_rank for lp in live]),
                _mean([lp.utilisation for lp in live]),
                _mean([lp.top1_share for lp in live]),
            )
        )
    last = means[-1]
    first_util = next((m[2] for m in means if m[2] is not None), None)
    trend = None if first_util is None or last[2] is None else last[2] - first_util
    return {
        "n_snapshots": len(s.spectra),
        "n_layers": len(s.spectra[-1].layers),
        "mean_stable_rank": last[1],
        "mean_utilisation": last[2],
        "mean_top1_share": last[3],
        "utilisation_change": trend,  # last − first non-dead snapshot
        "utilisation_trend": [[st, u] for st, _, u, _ in means],
    }


def summarise(s: RunSeries, window: int = 10) -> dict[str, Any]:
    losses = s.finite_losses()
    train_loss = _mean(losses[-window:])
    held = s.heldout()
    last_eval = dict(held[-1].metrics) if held else {}
    eval_loss = last_eval.get("loss")
    eval_ppl = last_eval.get("ppl") if last_eval.get("ppl") is not None else _ppl(eval_loss)
    train_ppl = _ppl(train_loss)
    accs = [a for a in (p.metrics.get("accuracy") for p in held) if isinstance(a, float)]
    return {
        "run_id": s.run_id,
        "model": s.meta.get("model"),
        "dataset": s.meta.get("dataset"),
        "status": s.end_status,
        "last_step": max((p.step for p in s.train), default=None),
        "n_train_points": len(s.train),
        "n_evals": len(held),
        "final_train_loss": train_loss,
        "train_ppl": train_ppl,
        "final_eval_loss": eval_loss,
        "eval_ppl": eval_ppl,
        "gap_ratio": eval_ppl / train_ppl if eval_ppl is not None and train_ppl else None,
        "final_eval_accuracy": accs[-1] if accs else None,
        "best_eval_accuracy": max(accs) if accs else None,
        "final_eval_metrics": last_eval,
        "spectral": _spectral(s),
    }
