"""The geometry event: schema, writer, reader, and Gradience's flat per-step logs (no torch)."""

from __future__ import annotations

import json

import pytest

from lorascope.errors import FormatError, InvalidArgumentError
from lorascope.monitor import monitor_run
from lorascope.telemetry import RunWriter, parse_lines, read_log, read_run
from lorascope.telemetry.schema import SCHEMA, validate

GEOMETRY = {
    "weight_norm": 27.6,
    "grad_norm": 1.0,
    "grad_norm_preclip": 1.9,
    "cos_grad_weight": -0.01,
    "grad_to_weight_ratio": 0.036,
    "spectral_complexity": 0.95,
    "n_params": 345984,
    "scope": "full",
    "loss": 4.35,
}


def _record(**over):
    rec = {"schema": SCHEMA, "ts": 1.0, "run_id": "r", "event": "geometry", "step": 10, **GEOMETRY}
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


def test_writer_writes_geometry_and_reader_reads_it(tmp_path):
    path = tmp_path / "run.jsonl"
    with RunWriter(path) as w:
        w.write("geometry", 10, **GEOMETRY)
        w.write("geometry", 20, **{**GEOMETRY, "cos_grad_weight": None, "grad_norm_preclip": float("nan")})
    events = read_run(path)
    assert [e.event for e in events] == ["geometry", "geometry"]
    assert {k: events[0].get(k) for k in GEOMETRY} == GEOMETRY
    assert events[1].get("cos_grad_weight") is None and events[1].get("grad_norm_preclip") == "NaN"


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        (
            {"weight_norm": "27.6"},
            "geometry event weight_norm must be a number or null, got the string '27.6'",
        ),
        ({"grad_norm": _DROP}, "geometry event lacks grad_norm"),
        ({"n_params": -1}, "geometry event n_params must be an integer ≥ 0, got int"),
        ({"n_params": 1.5}, "geometry event n_params must be an integer ≥ 0, got float"),
        ({"scope": "all"}, "geometry scope 'all' is not one of lora, full"),
        ({"scope": _DROP}, "geometry event lacks scope"),
        ({"loss": [1.0]}, "geometry event loss must be a number or null, got a list"),
    ],
)
def test_bad_geometry_records_are_refused(over, problem):
    assert validate(_record(**over)) == problem


def test_optional_fields_may_be_absent_or_null():
    for key in ("grad_norm_preclip", "spectral_complexity", "loss", "n_params"):
        assert validate(_record(**{key: _DROP})) is None
        assert validate(_record(**{key: None})) is None


def test_writer_refuses_an_invalid_geometry_event(tmp_path):
    with RunWriter(tmp_path / "run.jsonl") as w, pytest.raises(InvalidArgumentError, match="scope 'x'"):
        w.write("geometry", 1, **{**GEOMETRY, "scope": "x"})


def test_monitor_reads_a_log_with_geometry_events(tmp_path):
    path = tmp_path / "run.jsonl"
    with RunWriter(path) as w:
        for step in range(0, 40, 10):
            w.write("train_step", step, loss=2.0 - step / 100, grad_norm=1.0)
            w.write("geometry", step, **GEOMETRY)
        w.write("run_end", 40, status="ok")
    report = monitor_run(path)
    assert report.summary["last_step"] == 30 and report.summary["status"] == "ok"
    assert read_log(path).n_unknown_events == 0


FLAT = [
    {"step": 0, "train_loss": 4.2, "weight_norm": 27.0, "grad_norm": 2.0, "grad_to_weight_ratio": 0.074,
     "cos_grad_weight": 0.001, "spectral_complexity": 0.96, "lr": 1e-4},
    {"iter": 10, "train_loss": 3.1, "weight_norm": 27.5, "grad_norm": 0.8, "grad_to_weight_ratio": 0.029,
     "cos_grad_weight": -0.02, "spectral_complexity": None},
    {"step": 20, "val_loss": 3.3},
    {"step": 30, "train_loss": 2.9},
]  # fmt: skip


def test_gradience_flat_records_map_to_train_step_and_geometry(tmp_path):
    path = tmp_path / "baseline_seed1337.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in FLAT))
    log = read_log(path)
    assert log.run_ids == ("baseline_seed1337",) and log.n_unknown_events == 0
    got = [(e.event, e.step) for e in log.events]
    assert got == [
        ("train_step", 0),
        ("geometry", 0),
        ("train_step", 10),
        ("geometry", 10),
        ("eval", 20),
        ("train_step", 30),
    ]
    ts0, g0, _, g10, ev, _ = log.events
    assert ts0.get("loss") == 4.2 and ts0.get("lr") == 1e-4 and ts0.get("grad_norm") == 2.0
    want = {k: FLAT[0][k] for k in ("weight_norm", "grad_norm", "grad_to_weight_ratio", "cos_grad_weight")}
    assert {k: g0.get(k) for k in want} == want
    assert g0.get("spectral_complexity") == 0.96 and g0.get("loss") == 4.2 and g0.get("scope") == "full"
    assert g0.get("n_params") is None and g10.get("spectral_complexity") is None
    assert ev.get("split") == "val" and ev.get("metrics") == {"loss": 3.3}


def test_gradience_flat_records_keep_their_kinds_checked():
    with pytest.raises(FormatError, match="line 2: train_step event loss must be a number or null"):
        parse_lines('{"step": 0, "train_loss": 1.0}\n{"step": 10, "train_loss": "1.0"}\n')
    with pytest.raises(FormatError, match="line 1: step must be an integer"):
        parse_lines('{"step": 1.5, "train_loss": 1.0}\n')
    with pytest.raises(FormatError, match="line 1: missing field"):  # not flat: no known key
        parse_lines('{"step": 1, "accuracy": 1.0}\n')
