"""The monitor's thresholds (`Thresholds`): every default in one frozen dataclass, docs/telemetry.md."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    window: int = 10  # logged train points per plateau window (two windows needed)
    loss_plateau_rel: float = 0.01  # loss improved < 1 % between windows -> plateau
    grad_plateau_rel: float = 0.05  # mean grad norm changed < 5 % between windows -> plateau
    falling_loss_rel: float = 0.02  # train loss still falling ≥ 2 %: vetoes CONSIDER_STOPPING
    spike_factor: float = 5.0  # grad norm > 5× the running mean of the previous points
    spike_history: int = 5  # points of history needed before spikes are judged
    spike_span: int = 50  # running-mean span (points)
    eval_patience: int = 3  # evals without improvement -> eval plateau
    eval_min_delta: float = 0.001  # relative improvement that counts
    gap_ratio: float = 1.5  # exp(eval loss − train loss) ≥ 1.5 -> memorisation gap
    low_util: float = 0.25  # mean utilisation (stable rank / r) below this -> low utilisation
    low_util_min_rank: int = 8  # ...only judged for r ≥ 8 (r = 2 at 0.4 is fine)
    collapse_jump: float = 0.25  # top-1 energy share rises by ≥ 0.25 between snapshots...
    collapse_share: float = 0.80  # ...to ≥ 0.80 -> rank-1 collapse
