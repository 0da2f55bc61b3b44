"""regime features: the early window and its features against values worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from regime_logs import geometry, record, write_lines

from lorascope.regime import FEATURE_SETS, FeatureConfig, feature_table, read_run_data
from lorascope.regime.features import run_features, window_fit


def small_log(tmp_path, *, train_steps=True, extra=()):
    """Geometry at steps 0..100 every 10; the window (step ≤ 0.2 × 100) holds steps 0, 10, 20."""
    w = [10.0, 11.0, 13.0, 50, 50, 50, 50, 50, 50, 50, 50]
    lines = [record("run_start", None, meta={"regime": "a", "seed": 1})]
    for i, step in enumerate(range(0, 101, 10)):
        if train_steps:
            lines.append(record("train_step", step, loss=[3.0, 2.0, 1.0][i] if i < 3 else 0.5))
        lines.append(
            geometry(
                step,
                weight_norm=w[i],
                grad_norm=float(i + 1),
                grad_to_weight_ratio=0.1 * (i + 1),
                cos_grad_weight=-0.5 if i % 2 else 0.5,
                spectral_complexity=0.25 * (i + 1),
                loss=9.0 + i,
            )
        )
    lines += list(extra)
    return write_lines(tmp_path / "run.jsonl", lines)


def test_features_hand_computed(tmp_path):
    row = run_features(read_run_data(small_log(tmp_path)), FeatureConfig())
    assert row.excluded is None and row.n_records == 3 and row.window_end == 20
    v = row.values
    # w = 10, 11, 13 at u = 0, ½, 1: c0 = 10, c1 = 1, c2 = 2 (exact) -> slope 1, curvature 4
    assert v["weight_norm_mean"] == pytest.approx(34 / 3)
    assert v["weight_norm_slope"] == pytest.approx(1.0)
    assert v["weight_norm_curvature"] == pytest.approx(4.0)
    assert v["grad_norm_mean"] == pytest.approx(2.0)
    assert v["grad_to_weight_ratio_mean"] == pytest.approx(0.2)
    assert v["cos_grad_weight_mean"] == pytest.approx(0.5 / 3)
    assert v["spectral_complexity_mean"] == pytest.approx(0.5)
    assert v["loss_mean"] == pytest.approx(2.0)  # train_step losses win over geometry's loss


def test_loss_from_geometry_when_no_train_steps(tmp_path):
    row = run_features(read_run_data(small_log(tmp_path, train_steps=False)), FeatureConfig())
    assert row.values["loss_mean"] == pytest.approx(10.0)  # geometry loss 9, 10, 11


def test_quadratic_fit_matches_numpy_polyfit():
    steps = [0, 10, 20, 35, 40, 60]
    w = [1.0, 1.3, 1.2, 2.0, 2.4, 3.1]
    u = (np.array(steps) - 0) / 60
    c2, c1, _ = np.polyfit(u, w, 2)
    assert window_fit(steps, w) == pytest.approx((c1, 2 * c2))


def test_wider_window_and_fraction(tmp_path):
    row = run_features(read_run_data(small_log(tmp_path)), FeatureConfig(early_frac=0.5))
    assert row.n_records == 6 and row.window_end == 50
    assert row.values["grad_norm_mean"] == pytest.approx(3.5)


def test_geometry_read_with_the_schema_entry_too(tmp_path, monkeypatch):
    from lorascope.telemetry import schema

    path = small_log(tmp_path)
    without = run_features(read_run_data(path), FeatureConfig())
    monkeypatch.setitem(schema.EVENTS, "geometry", ("weight_norm",))
    run = read_run_data(path)
    assert len(run.geometry) == 11
    assert run_features(run, FeatureConfig()).values == without.values


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([], "empty log (no events)"),
        (
            [record("train_step", s, loss=1.0) for s in range(0, 101, 10)],
            "no geometry events (log them with the geometry probe or LorascopeCallback)",
        ),
        (
            [geometry(s) for s in (0, 30, 100)],
            "1 geometry record(s) with step ≤ 20, need ≥ 3",
        ),
        (
            [geometry(s, grad_norm="NaN" if s == 10 else 1.0) for s in range(0, 101, 10)],
            "geometry grad_norm is nan at step 10",
        ),
        (
            [geometry(s, weight_norm="Infinity" if s == 20 else 1.0) for s in range(0, 101, 10)],
            "geometry weight_norm is inf at step 20",
        ),
        (
            [geometry(s, spectral_complexity=None) for s in range(0, 101, 10)],
            "geometry spectral_complexity missing at step 0",
        ),
        (
            [geometry(s, loss=None) for s in range(0, 101, 10)],
            "no train_step loss in the window, and geometry loss missing at step 0",
        ),
    ],
)
def test_runs_without_features_are_listed_with_their_reason(tmp_path, lines, reason):
    path = write_lines(tmp_path / "bad.jsonl", lines, newline=bool(lines))
    table = feature_table([read_run_data(path)])
    assert table.kept == ()
    assert table.rows[0].excluded == reason
    assert table.rows[0].values == {}


def test_a_geometry_value_that_is_not_a_number(tmp_path):
    """Where the telemetry schema lists the geometry event the reader refuses the line; where it does
    not, the features name the value."""
    from lorascope.errors import FormatError
    from lorascope.telemetry import schema

    lines = [geometry(s, cos_grad_weight="high" if s == 20 else 0.1) for s in range(0, 101, 10)]
    path = write_lines(tmp_path / "bad.jsonl", lines)
    if "geometry" in schema.PAYLOAD:
        with pytest.raises(FormatError, match="line 3: geometry event cos_grad_weight must be a number"):
            read_run_data(path)
    else:
        row = run_features(read_run_data(path), FeatureConfig())
        assert row.excluded == "geometry cos_grad_weight is not a number ('high') at step 20"


def test_missing_spectral_complexity_is_fine_for_sets_without_it(tmp_path):
    path = write_lines(
        tmp_path / "g.jsonl", [geometry(s, spectral_complexity=None) for s in range(0, 101, 10)]
    )
    config = FeatureConfig(sets=("geometry_6",))
    row = run_features(read_run_data(path), config)
    assert row.excluded is None and set(row.values) == set(FEATURE_SETS["geometry_6"])


def test_nan_outside_the_window_does_not_matter(tmp_path):
    lines = [geometry(s, grad_norm="NaN" if s == 90 else 1.0) for s in range(0, 101, 10)]
    row = run_features(read_run_data(write_lines(tmp_path / "late.jsonl", lines)), FeatureConfig())
    assert row.excluded is None and row.values["grad_norm_mean"] == 1.0


def test_torn_last_line_is_dropped(tmp_path):
    lines = [geometry(s) for s in range(0, 101, 10)] + ['{"schema": "lorascope.tele']
    run = read_run_data(write_lines(tmp_path / "torn.jsonl", lines, newline=False))
    assert run.torn_tail and len(run.geometry) == 11


def test_window_fraction_is_checked():
    with pytest.raises(ValueError, match=r"--early-frac must be in \(0, 1\], got 0"):
        FeatureConfig(early_frac=0)
    with pytest.raises(ValueError, match="unknown feature set"):
        FeatureConfig(sets=("nope",))


def test_steps_rounding_keeps_the_boundary(tmp_path):
    lines = [geometry(s) for s in range(0, 101)]
    row = run_features(
        read_run_data(write_lines(tmp_path / "r.jsonl", lines)), FeatureConfig(early_frac=0.29)
    )
    assert row.window_end == 29 and row.n_records == 30
    assert not math.isnan(row.values["weight_norm_mean"])
