"""Monitor rules on synthetic series: each rule must fire on its pattern and stay quiet otherwise."""

from __future__ import annotations

import json
import math

import pytest

from lorascope.cli.main import main
from lorascope.monitor import RULES, LiveMonitor, Thresholds, analyse, build_series, monitor_run
from lorascope.monitor.rules import window_change
from lorascope.telemetry import RunWriter
from lorascope.telemetry.schema import Event


def ev(event, step, **data):
    return Event(event=event, run_id="r", ts=float(step), step=step, data=data)


def train(losses, grads=None):
    grads = grads if grads is not None else [1.0] * len(losses)
    return [
        ev("train_step", 10 * (i + 1), loss=loss, lr=1e-4, grad_norm=g)
        for i, (loss, g) in enumerate(zip(losses, grads, strict=True))
    ]


def evals(values, metric="loss", split="eval"):
    return [ev("eval", 100 * (i + 1), split=split, metrics={metric: v}) for i, v in enumerate(values)]


def spectral(step, shares, util=0.5, rank=8):
    layers = [
        {"name": f"l{i}", "rank": rank, "stable_rank": util * rank, "utilisation": util, "top1_share": s}
        for i, s in enumerate(shares)
    ]
    return ev("spectral", step, layers=layers, summary={})


def codes(events, **th):
    report = analyse(build_series(events), Thresholds(**th))
    return {a.code for a in report.alerts}


FALLING = [3.0 * 0.97**i for i in range(30)]  # ~3 % per point: clearly still learning
FLAT = [1.0 + 0.001 * ((-1) ** i) for i in range(30)]
DECREASING_GRADS = [2.0 * 0.95**i for i in range(30)]


def test_registry_is_explicit_and_complete():
    assert list(RULES) == [
        "nonfinite_loss",
        "gradient_spike",
        "loss_plateau",
        "grad_norm_plateau",
        "eval_plateau",
        "memorisation_gap",
        "low_utilisation",
        "rank1_collapse",
        "consider_stopping",
    ]


def test_window_change():
    assert window_change([2, 2, 1, 1], 2) == pytest.approx(0.5)
    assert window_change([1, 1, 1], 2) is None


def test_healthy_run_raises_nothing():
    assert codes(train(FALLING, DECREASING_GRADS) + evals([1.0, 0.9, 0.8, 0.7])) == set()


def test_nonfinite_loss_fires_and_not_otherwise():
    losses = FALLING[:10] + [math.nan] + FALLING[11:]
    assert "NONFINITE_LOSS" in codes(train(losses, DECREASING_GRADS))
    assert "NONFINITE_LOSS" in codes(train(FALLING, DECREASING_GRADS[:5] + [math.inf] + DECREASING_GRADS[6:]))
    assert "NONFINITE_LOSS" not in codes(train(FALLING, DECREASING_GRADS))


def test_gradient_spike_threshold():
    grads = [1.0] * 10 + [5.5] + [1.0] * 5
    report = analyse(build_series(train(FALLING[:16], grads)))
    spikes = [a for a in report.alerts if a.code == "GRAD_SPIKE"]
    assert len(spikes) == 1 and spikes[0].step == 110
    assert spikes[0].context["ratio"] == pytest.approx(5.5)
    # 4.9× the mean is not a spike; nor is a spike before enough history
    assert "GRAD_SPIKE" not in codes(train(FALLING[:16], [1.0] * 10 + [4.9] + [1.0] * 5))
    assert "GRAD_SPIKE" not in codes(train(FALLING[:6], [1.0, 1.0, 50.0, 1.0, 1.0, 1.0]))


def test_loss_plateau_fires_on_flat_not_on_falling():
    assert "LOSS_PLATEAU" in codes(train(FLAT, DECREASING_GRADS))
    assert "LOSS_PLATEAU" not in codes(train(FALLING, DECREASING_GRADS))
    assert "LOSS_PLATEAU" not in codes(train(FLAT[:19]))  # fewer than two windows


def test_grad_norm_plateau():
    assert "GRAD_NORM_PLATEAU" in codes(train(FALLING, [1.0] * 30))
    assert "GRAD_NORM_PLATEAU" not in codes(train(FALLING, DECREASING_GRADS))


def test_eval_plateau_loss_and_accuracy():
    assert "EVAL_PLATEAU" in codes(evals([1.0, 0.8, 0.81, 0.80, 0.82]))
    assert "EVAL_PLATEAU" not in codes(evals([1.0, 0.8, 0.81, 0.82]))  # only 2 since best
    assert "EVAL_PLATEAU" not in codes(evals([1.0, 0.9, 0.8, 0.7, 0.6]))
    assert "EVAL_PLATEAU" in codes(evals([0.5, 0.7, 0.7, 0.69, 0.7], metric="accuracy"))
    assert "EVAL_PLATEAU" not in codes(evals([0.5, 0.6, 0.7, 0.8], metric="accuracy"))
    assert "EVAL_PLATEAU" not in codes(evals([1.0, 0.8, 0.8, 0.8, 0.8], split="train"))


def test_eval_plateau_with_falling_train_loss_is_not_consider_stopping():
    # The seeds' case: train loss keeps falling, eval loss stalls.  Grad norm is flat, so two
    # plateau signals agree; the falling train loss must still veto CONSIDER_STOPPING.
    events = train(FALLING, [1.0] * 30) + evals([1.0, 0.8, 0.81, 0.80, 0.82])
    found = codes(events)
    assert {"EVAL_PLATEAU", "GRAD_NORM_PLATEAU"} <= found
    assert "LOSS_PLATEAU" not in found
    assert "CONSIDER_STOPPING" not in found


def test_consider_stopping_when_two_plateaus_agree():
    assert "CONSIDER_STOPPING" in codes(train(FLAT, DECREASING_GRADS) + evals([1.0, 0.8, 0.81, 0.80, 0.82]))
    assert "CONSIDER_STOPPING" in codes(train(FLAT, [1.0] * 30))
    # one signal alone is not enough
    assert "CONSIDER_STOPPING" not in codes(train(FLAT, DECREASING_GRADS))


def test_memorisation_gap():
    low_train = [0.1] * 30
    assert "MEMORISATION_GAP" in codes(train(low_train) + evals([0.6]))  # exp(0.5) = 1.65
    assert "MEMORISATION_GAP" not in codes(train(low_train) + evals([0.4]))  # exp(0.3) = 1.35


def test_low_utilisation():
    assert "LOW_UTILISATION" in codes([spectral(100, [0.5, 0.5], util=0.1)])
    assert "LOW_UTILISATION" not in codes([spectral(100, [0.5, 0.5], util=0.4)])
    assert "LOW_UTILISATION" not in codes([spectral(100, [0.5, 0.5], util=0.1, rank=4)])  # r < 8
    # only the last snapshot counts
    assert "LOW_UTILISATION" not in codes([spectral(100, [0.5], util=0.1), spectral(200, [0.5], util=0.5)])


def test_rank1_collapse():
    assert "RANK1_COLLAPSE" in codes([spectral(100, [0.3, 0.3]), spectral(200, [0.9, 0.35])])
    assert "RANK1_COLLAPSE" not in codes(
        [spectral(100, [0.3, 0.3]), spectral(200, [0.5, 0.35])]
    )  # small jump
    assert "RANK1_COLLAPSE" not in codes(
        [spectral(100, [0.9, 0.3]), spectral(200, [0.95, 0.3])]
    )  # always high
    # a dead layer (B = 0 at init) coming alive is not a collapse
    assert "RANK1_COLLAPSE" not in codes([spectral(0, [0.0], util=0.0), spectral(100, [0.95])])


def test_live_monitor_reports_each_alert_once():
    live = LiveMonitor()
    for e in train(FLAT, [1.0] * 30)[:19]:
        live.add(e)
    assert live.check() == []
    live.add(train(FLAT, [1.0] * 30)[19])
    first = {a.code for a in live.check()}
    assert {"LOSS_PLATEAU", "GRAD_NORM_PLATEAU", "CONSIDER_STOPPING"} <= first
    live.add(ev("train_step", 999, loss=1.0, lr=1e-4, grad_norm=1.0))
    assert live.check() == []


def _write_log(path, losses, grads, eval_losses):
    with RunWriter(path, process_index=0, run_id="run-a") as w:
        w.write("run_start", meta={"model": "m", "dataset": "d"})
        for i, (loss, g) in enumerate(zip(losses, grads, strict=True)):
            w.write("train_step", 10 * (i + 1), loss=loss, lr=1e-4, grad_norm=g)
        for i, v in enumerate(eval_losses):
            w.write("eval", 100 * (i + 1), split="eval", metrics={"loss": v, "accuracy": 0.5 + 0.1 * i})
        w.write("run_end", 300, status="ok", reason=None)


def test_monitor_file_summary(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_log(path, FALLING, DECREASING_GRADS, [1.0, 0.9, 0.8])
    report = monitor_run(path)
    s = report.summary
    assert report.run_id == "run-a" and s["status"] == "ok"
    assert s["final_train_loss"] == pytest.approx(sum(FALLING[-10:]) / 10)
    assert s["eval_ppl"] == pytest.approx(math.exp(0.8))
    assert s["gap_ratio"] == pytest.approx(math.exp(0.8) / math.exp(s["final_train_loss"]))
    assert s["final_eval_accuracy"] == pytest.approx(0.7)
    assert report.exit_code("info") == 0


def test_cli_json_and_fail_on(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    _write_log(path, FLAT, [1.0] * 30, [1.0, 0.8, 0.81, 0.80, 0.82])
    assert main(["monitor", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "lorascope.monitor/v1"
    assert "CONSIDER_STOPPING" in {a["code"] for a in out["alerts"]}
    assert main(["monitor", str(path), "--fail-on", "warning"]) == 1
    assert main(["monitor", str(path), "--fail-on", "error"]) == 0
    text = capsys.readouterr().out
    assert "CONSIDER_STOPPING" in text and "EVAL_PLATEAU" in text
    assert main(["monitor", str(path), "--verbose", "--eval-patience", "10"]) == 0
    text = capsys.readouterr().out
    assert "EVAL_PLATEAU" not in text and "thresholds:" in text


def test_cli_corrupt_log_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    _write_log(path, FLAT[:3], [1.0] * 3, [])
    lines = path.read_text().splitlines()
    lines[2] = "{broken"
    path.write_text("\n".join(lines) + "\n")
    assert main(["monitor", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorascope: error: ") and "line 3: not valid JSON" in err
    assert "\n" not in err
