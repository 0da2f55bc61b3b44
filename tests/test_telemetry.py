"""Run-log writer and reader: append semantics, redaction, torn and corrupt lines, ranks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lorascope.errors import FormatError, InvalidArgumentError
from lorascope.telemetry import SCHEMA, RunWriter, parse_lines, read_log, read_run
from lorascope.telemetry.schema import as_float


def _write_small_run(path, run_id=None):
    with RunWriter(path, run_id=run_id, process_index=0) as w:
        w.write("run_start", meta={"model": "tiny", "seed": 1})
        w.write("train_step", 1, loss=2.5, lr=1e-4, grad_norm=1.0)
        w.write("eval", 1, split="eval", metrics={"loss": 2.4})
        w.write("run_end", 1, status="ok", reason=None)
    return w.run_id


def test_roundtrip_every_line_is_strict_json(tmp_path):
    path = tmp_path / "run.jsonl"
    rid = _write_small_run(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert {r["schema"] for r in records} == {SCHEMA}
    events = read_run(path)
    assert [e.event for e in events] == ["run_start", "train_step", "eval", "run_end"]
    assert events[1].get("loss") == 2.5 and events[1].step == 1 and events[1].run_id == rid
    assert events[1].line == 2


def test_append_never_truncates_and_runs_stay_apart(tmp_path):
    path = tmp_path / "run.jsonl"
    first = _write_small_run(path)
    second = _write_small_run(path)
    assert first != second
    log = read_log(path)
    assert log.run_ids == (first, second)
    assert len(log.events) == 8
    assert all(e.run_id == second for e in log.run())
    assert all(e.run_id == first for e in log.run(first))
    with pytest.raises(FormatError, match="no run 'nope'"):
        log.run("nope")


def test_nonfinite_written_as_strings_and_read_back(tmp_path):
    path = tmp_path / "run.jsonl"
    with RunWriter(path, process_index=0) as w:
        w.write("train_step", 3, loss=float("nan"), lr=1e-4, grad_norm=float("inf"))
    raw = path.read_text()
    assert '"loss":"NaN"' in raw and '"grad_norm":"Infinity"' in raw
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    (event,) = read_run(path)
    assert math.isnan(as_float(event.get("loss")))
    assert as_float(event.get("grad_norm")) == math.inf
    assert as_float(None) is None and as_float("text") is None


def test_redaction_of_long_strings_unless_allowed(tmp_path):
    long = "x" * 300
    path = tmp_path / "run.jsonl"
    with RunWriter(path, process_index=0) as w:
        w.write("run_start", meta={"notes": long, "short": "y" * 256, "nested": [{"t": long}]})
    meta = read_run(path)[0].get("meta")
    assert meta["notes"] == "[REDACTED len=300]"
    assert meta["nested"][0]["t"] == "[REDACTED len=300]"
    assert meta["short"] == "y" * 256
    with RunWriter(path, process_index=0, allow_text=True) as w:
        w.write("run_start", meta={"notes": long})
    assert read_run(path)[0].get("meta")["notes"] == long


def test_torn_last_line_is_tolerated(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_small_run(path)
    with open(path, "a") as fh:
        fh.write('{"schema": "lorascope.telemetry/v1", "ts": 1.0, "run_')  # crash mid-write
    log = read_log(path)
    assert log.torn_tail is True
    assert len(log.events) == 4
    # the next run starts on a fresh line, so the torn line becomes an interior corrupt line
    _write_small_run(path)
    with pytest.raises(FormatError, match=r"line 5: not valid JSON"):
        read_log(path)


def test_corrupt_interior_line_names_the_line(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_small_run(path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError) as info:
        read_log(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 2: not valid JSON")
    assert "\n" not in msg


def test_terminated_invalid_last_line_is_not_torn():
    text = '{"schema":"lorascope.telemetry/v1","ts":1,"run_id":"r","event":"train_step","step":1}\n'
    with pytest.raises(FormatError, match="line 1: train_step event lacks loss"):
        parse_lines(text)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"schema": "other.telemetry/v1", "ts": 1, "run_id": "r", "event": "x"}, "not a telemetry schema"),
        ({"schema": "gradience.vnext.telemetry/v2", "ts": 1, "run_id": "r", "event": "x"}, "not supported"),
        ({"schema": "lorascope.telemetry/v2", "ts": 1, "run_id": "r", "event": "x"}, "not supported"),
        ({"schema": SCHEMA, "ts": 1, "run_id": "r"}, "missing field(s) event"),
        (
            {"schema": SCHEMA, "ts": 1, "run_id": "r", "event": "train_step", "step": 1.5, "loss": 1},
            "step must",
        ),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_records_rejected_with_line(record, message):
    good = json.dumps(
        {"schema": SCHEMA, "ts": 1, "run_id": "r", "event": "run_end", "step": None, "status": "ok"}
    )
    text = good + "\n" + json.dumps(record) + "\n"
    with pytest.raises(FormatError, match="line 2: ") as info:
        parse_lines(text)
    assert message in str(info.value)


def test_unknown_fields_and_events_are_ignored():
    rec = {
        "schema": SCHEMA,
        "ts": 1,
        "run_id": "r",
        "event": "train_step",
        "step": 1,
        "loss": 1.0,
        "future": 7,
    }
    new = {"schema": SCHEMA, "ts": 2, "run_id": "r", "event": "hologram", "step": 2}
    log = parse_lines(json.dumps(rec) + "\n" + json.dumps(new) + "\n")
    assert [e.event for e in log.events] == ["train_step"]
    assert log.events[0].get("future") == 7
    assert log.n_unknown_events == 1


def test_non_main_process_writes_nothing_and_per_rank_files(tmp_path):
    path = tmp_path / "run.jsonl"
    w = RunWriter(path, process_index=1)
    assert w.write("train_step", 1, loss=1.0) is None
    w.close()
    assert not path.exists()
    with RunWriter(path, process_index=2, per_rank=True) as w:
        w.write("train_step", 1, loss=1.0)
    assert (tmp_path / "run.rank2.jsonl").is_file()


def test_writer_rejects_bad_events(tmp_path):
    with RunWriter(tmp_path / "r.jsonl", process_index=0) as w:
        with pytest.raises(InvalidArgumentError, match="unknown telemetry event 'bogus'"):
            w.write("bogus")
        with pytest.raises(InvalidArgumentError, match="train_step event lacks loss"):
            w.write("train_step", 1, lr=1.0)
        with pytest.raises(InvalidArgumentError, match="severity must be one of"):
            w.alert("fatal", "X", "m")


def test_missing_log_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run log not found"):
        read_log(tmp_path / "absent.jsonl")


def test_import_lorascope_telemetry_does_not_import_torch():
    code = "import sys, lorascope, lorascope.telemetry; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
