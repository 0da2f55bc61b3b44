"""audit --append: the audit joins the last run of a run log as a spectral snapshot; nothing is
truncated; a new log gets a run of its own; the monitor reads the result."""

from __future__ import annotations

import json

import pytest
from conftest import strict_json

from lorascope.cli.main import main
from lorascope.monitor import monitor_run
from lorascope.telemetry import RunWriter, read_log


def _training_log(path):
    with RunWriter(path, run_id="old") as w:
        w.write("run_start", None, meta={"model": "m"})
        w.write("run_end", 3, status="ok", reason=None)
    with RunWriter(path, run_id="train") as w:
        w.write("run_start", None, meta={"model": "m"})
        for step in (10, 20, 30):
            w.write("train_step", step, loss=1.0 / step, lr=1e-4, grad_norm=1.0)
        w.write("run_end", 30, status="ok", reason=None)


def test_append_joins_the_last_run_and_never_truncates(small_adapter, tmp_path, capsys):
    path, layers = small_adapter
    log = tmp_path / "run.jsonl"
    _training_log(log)
    before = log.read_bytes()
    assert main(["audit", str(path), "--append", str(log), "--threshold", "0.9", "--threshold", "0.99"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("lorascope audit:") and "appended 1 event(s) to run train" in err
    assert log.read_bytes().startswith(before)
    rl = read_log(log)
    assert rl.run_ids == ("old", "train")
    snap = rl.run("train")[-1]
    assert snap.event == "spectral" and snap.step == 30  # the largest step of that run
    assert (
        main(
            [
                "audit",
                str(path),
                "--json",
                "--no-singular-values",
                "--threshold",
                "0.9",
                "--threshold",
                "0.99",
            ]
        )
        == 0
    )
    report = strict_json(capsys.readouterr().out)
    want = {x["name"]: x for x in report["layers"]}
    assert len(snap.get("layers")) == len(layers)
    for x in snap.get("layers"):
        ref = want[x["name"]]
        for key in ("rank", "sigma_max", "stable_rank", "utilisation", "energy_rank@0.99", "suggested_rank"):
            assert x[key] == ref[key]
        assert x["top1_share"] == pytest.approx(ref["sigma_max"] ** 2 / ref["frobenius"] ** 2, rel=1e-12)
    summary = snap.get("summary")
    assert summary["source"] == "audit" and summary["n_layers"] == len(layers)
    assert summary["audit"]["suggested_rank"]["median"] == report["suggestions"]["median"]["rank"]
    assert summary["mean_utilisation"] == pytest.approx(report["summary"]["utilisation"]["mean"], rel=1e-12)
    monitored = monitor_run(log)  # the monitor sees the snapshot of the training run
    assert monitored.summary["spectral"]["n_snapshots"] == 1


def test_append_to_a_new_log_starts_a_run(small_adapter, tmp_path, capsys):
    path, _ = small_adapter
    log = tmp_path / "logs" / "audit.jsonl"
    assert main(["audit", str(path), "--json", "--policies", "all", "--append", str(log), "-q"]) == 0
    assert capsys.readouterr().err == ""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["event"] for e in events] == ["run_start", "spectral", "run_end"]
    assert len({e["run_id"] for e in events}) == 1
    assert events[0]["meta"]["source"] == "lorascope audit"
    assert set(events[1]["layers"][0]["policies"]) == {"energy", "erank", "knee", "oht"}
    assert set(events[1]["summary"]["audit"]["policies"]) == {"energy", "erank", "knee", "oht"}


def test_append_to_a_malformed_log_is_one_line_and_writes_nothing(small_adapter, tmp_path, capsys):
    path, _ = small_adapter
    log = tmp_path / "run.jsonl"
    log.write_text('{"not": "a record"}\n')
    assert main(["audit", str(path), "--append", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(log) in err and "line 1" in err
    assert log.read_text() == '{"not": "a record"}\n'


def test_append_refuses_the_adapter_itself(small_adapter, capsys):
    path, _ = small_adapter
    target = path / "adapter_config.json"
    before = target.read_text()
    assert main(["audit", str(path), "--append", str(target)]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert target.read_text() == before
