"""`lorascope regime` end to end (features / fit / classify, --json parsed), the monitor's regime
rule, and every bad input: one line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

from regime_logs import geometry, record, regime_run, regime_runs, write_lines  # noqa: E402

from lorascope.cli.main import main  # noqa: E402

FAST = ["--permutations", "40", "--mi-shuffles", "3"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    paths = regime_runs(folder, seeds=3)
    out = folder / "fit"
    assert main(["regime", "fit", *paths, "--label-key", "meta.regime", "--out", str(out), *FAST]) == 0
    return folder, paths, out


def test_features_json_and_csv(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    code, out, _ = run_cli(capsys, "regime", "features", *paths[:2], "--json")
    doc = json.loads(out)
    assert code == 0 and [r["path"] for r in doc["runs"]] == paths[:2]
    assert doc["runs"][0]["excluded"] is None and doc["runs"][0]["window_end"] == 80
    assert set(doc["sets"]) == {"geometry_6", "geometry_7", "loss", "spectral"}
    dest = tmp_path / "f.csv"
    assert run_cli(capsys, "regime", "features", *paths[:2], "-o", dest)[0] == 0
    rows = list(csv.DictReader(dest.open()))
    assert len(rows) == 2 and float(rows[0]["grad_norm_mean"]) == doc["runs"][0]["values"]["grad_norm_mean"]


def test_fit_writes_the_folder(capsys, fitted):
    _, paths, out = fitted
    assert sorted(p.name for p in out.iterdir()) == [
        "features.csv",
        "regime-model.json",
        "regime.json",
        "regime.md",
    ]
    doc = json.loads((out / "regime.json").read_text())
    assert doc["schema"] == "lorascope.regime/v1" and doc["n_runs"] == 15 and doc["n_groups"] == 3
    assert doc["classes"] == ["baseline", "high_lr", "high_wd", "low_lr", "low_wd"]
    ridge = doc["sets"]["geometry_6"]["classifiers"]["ridge"]
    assert sum(map(sum, ridge["confusion"])) == 15 and ridge["n_correct"] == round(15 * ridge["accuracy"])
    assert 1 / 41 <= ridge["p_value"] <= 1
    assert doc["entropy_nats"] == pytest.approx(1.6094379, abs=1e-6)  # ln 5
    assert len(doc["mcnemar"]["logistic"]) == 6
    assert set(doc["dfa"]["by_regime"]) == set(doc["classes"]) and doc["excluded"] == []
    model = json.loads((out / "regime-model.json").read_text())
    assert model["feature_set"] == "geometry_7" and len(model["features"]) == 7
    assert "| geometry_6 |" in (out / "regime.md").read_text()


def test_fit_numbers_agree_with_scipy_and_with_themselves(fitted):
    from scipy.stats import binomtest, f_oneway

    _, _, out = fitted
    doc = json.loads((out / "regime.json").read_text())
    truth = [r["label"] for r in doc["runs"]]
    groups = [[r["dfa_alpha"] for r in doc["runs"] if r["label"] == c] for c in doc["classes"]]
    assert doc["dfa"]["anova"]["f"] == pytest.approx(f_oneway(*groups).statistic)
    for m in doc["mcnemar"]["logistic"]:
        first = doc["sets"][m["first"]]["classifiers"]["logistic"]["predictions"]
        second = doc["sets"][m["second"]]["classifiers"]["logistic"]["predictions"]
        b = sum(p == t != q for p, q, t in zip(first, second, truth, strict=True))
        c = sum(q == t != p for p, q, t in zip(first, second, truth, strict=True))
        assert (m["b"], m["c"]) == (b, c)
        if b + c:
            assert m["p_exact"] == pytest.approx(binomtest(min(b, c), b + c).pvalue)
    for s in doc["sets"].values():
        ce = s["conditional_entropy"]
        assert s["mutual_information"]["cv_logistic_nats"] == pytest.approx(
            doc["entropy_nats"] - ce["logistic_nats"]
        )
        sm = s["mutual_information"]["summed_marginal"]
        assert sm["raw"] == pytest.approx(sum(sm["per_feature"])) and sm["n_shuffles"] == 3
    mi = {name: s["mutual_information"]["summed_marginal"] for name, s in doc["sets"].items()}
    for key in ("raw", "null_mean"):  # one per-feature MI for all sets: nested sets add up
        assert mi["geometry_7"][key] == pytest.approx(mi["geometry_6"][key] + mi["spectral"][key])


def test_fit_json_on_stdout(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    code, out, _ = run_cli(
        capsys,
        "regime",
        "fit",
        *paths,
        "--label-key",
        "meta.regime",
        "--out",
        tmp_path / "j",
        "--json",
        *FAST,
    )
    assert code == 0 and json.loads(out) == json.loads((tmp_path / "j" / "regime.json").read_text())


def test_classify_json(tmp_path, capsys, fitted):
    _, paths, out = fitted
    code, text, _ = run_cli(
        capsys, "regime", "classify", paths[1], "--model", out / "regime-model.json", "--json"
    )
    doc = json.loads(text)
    assert code == 0 and doc["schema"] == "lorascope.regime-classify/v1"
    assert doc["regime"] == doc["predictions"]["logistic"]
    assert sum(doc["probabilities"].values()) == pytest.approx(1.0)
    assert set(doc["centroid_distances"]) == set(doc["probabilities"])
    assert doc["out_of_range"] == []


def test_classify_warns_outside_the_training_range(tmp_path, capsys, fitted):
    _, _, out = fitted
    odd = write_lines(
        tmp_path / "odd.jsonl",
        [
            geometry(s, weight_norm=500.0 + s, grad_norm=0.5, grad_to_weight_ratio=0.001)
            for s in range(0, 401, 10)
        ],
    )
    code, text, err = run_cli(capsys, "regime", "classify", odd, "--model", out / "regime-model.json")
    assert code == 0
    assert "warning: weight_norm_mean = 540 is outside the training range" in text
    code, text, err = run_cli(
        capsys, "regime", "classify", odd, "--model", out / "regime-model.json", "--json"
    )
    assert "warning: weight_norm_mean = 540 is outside the training range" in err
    assert {o["feature"] for o in json.loads(text)["out_of_range"]} >= {"weight_norm_mean"}


def test_monitor_regime_rule(capsys, fitted, tmp_path):
    _, paths, out = fitted
    model = out / "regime-model.json"
    doc = json.loads(run_cli(capsys, "regime", "classify", paths[1], "--model", model, "--json")[1])
    got = doc["regime"]
    other = next(c for c in doc["probabilities"] if c != got)
    code, text, _ = run_cli(
        capsys, "monitor", paths[1], "--regime-model", model, "--expect-regime", got, "--json"
    )
    assert code == 0 and not [a for a in json.loads(text)["alerts"] if a["code"].startswith("REGIME")]
    code, text, _ = run_cli(
        capsys,
        "monitor",
        paths[1],
        "--regime-model",
        model,
        "--expect-regime",
        other,
        "--json",
        "--fail-on",
        "warning",
    )
    alerts = [a for a in json.loads(text)["alerts"] if a["code"] == "REGIME_MISMATCH"]
    assert code == 1 and len(alerts) == 1
    assert alerts[0]["context"]["predicted"] == got and alerts[0]["context"]["expected"] == other
    # a live run not yet past the model's window: the rule waits
    short = regime_run(tmp_path / "short.jsonl", "high_lr", 1, steps=40)
    code, text, _ = run_cli(
        capsys, "monitor", short, "--regime-model", model, "--expect-regime", other, "--json"
    )
    assert not [a for a in json.loads(text)["alerts"] if a["code"].startswith("REGIME")]


def error_line(capsys, *argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_fit_refuses_excluded_runs_unless_asked(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    empty = write_lines(tmp_path / "empty.jsonl", [], newline=False)
    nogeo = write_lines(
        tmp_path / "nogeo.jsonl", [record("train_step", s, loss=1.0) for s in range(0, 50, 10)]
    )
    out = tmp_path / "o"
    err = error_line(
        capsys, "regime", "fit", *paths, empty, nogeo, "--label-key", "meta.regime", "--out", out, *FAST
    )
    assert err == (
        f"lorascope: error: {empty}: empty log (no events) (2 of 17 runs cannot give the features) "
        "(hint: fix the logs, or pass --drop-excluded to fit on the rest (they are listed in the output))"
    )
    assert not out.exists()
    code, _, err = run_cli(
        capsys,
        "regime",
        "fit",
        *paths,
        empty,
        nogeo,
        "--label-key",
        "meta.regime",
        "--out",
        out,
        "--drop-excluded",
        *FAST,
    )
    assert code == 0
    assert f"excluded: {empty}: empty log (no events)" in err
    assert f"excluded: {nogeo}: no geometry events" in err
    doc = json.loads((out / "regime.json").read_text())
    assert [e["path"] for e in doc["excluded"]] == [str(empty), str(nogeo)] and doc["n_runs"] == 15
    assert f"- {empty}: empty log (no events)".replace("_", "\\_") in (out / "regime.md").read_text()


def test_fit_refuses_nan_in_the_window(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    bad = write_lines(
        tmp_path / "nan.jsonl", [geometry(s, grad_norm="NaN" if s == 10 else 1.0) for s in range(0, 101, 10)]
    )
    err = error_line(
        capsys, "regime", "fit", *paths, bad, "--label-key", "meta.regime", "--out", tmp_path / "o", *FAST
    )
    assert err.startswith(f"lorascope: error: {bad}: geometry grad_norm is nan at step 10 (1 of 16 runs")
    assert not (tmp_path / "o").exists()


def test_torn_middle_line_is_an_error(tmp_path, capsys):
    path = write_lines(tmp_path / "torn.jsonl", [geometry(0), '{"schema": "lorascope.tel', geometry(10)])
    err = error_line(capsys, "regime", "features", path)
    assert err.startswith(f"lorascope: error: {path}: line 2: not valid JSON")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one_regime", "every run has the label 'baseline': nothing to tell apart"),
        ("one_group", "all runs are in one group (1): leave-one-group-out needs ≥ 2 groups"),
        (
            "one_group_class",
            "regime 'low_lr' has runs in only one group (1): leave-one-group-out would never train on it",
        ),
    ],
)
def test_designs_leave_one_group_out_cannot_test(tmp_path, capsys, case, message):
    if case == "one_regime":
        paths = [str(regime_run(tmp_path / f"b{s}.jsonl", "baseline", s)) for s in (1, 2, 3)]
    elif case == "one_group":
        paths = [str(regime_run(tmp_path / f"{r}.jsonl", r, 1)) for r in ("baseline", "high_lr")]
    else:
        paths = [
            str(regime_run(tmp_path / f"{r}{s}.jsonl", r, s)) for r in ("baseline", "high_lr") for s in (1, 2)
        ]
        paths.append(str(regime_run(tmp_path / "low.jsonl", "low_lr", 1)))
    err = error_line(
        capsys, "regime", "fit", *paths, "--label-key", "meta.regime", "--out", tmp_path / "o", *FAST
    )
    assert message in err
    assert not (tmp_path / "o").exists()


def test_labels_file_errors(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    names = {Path(p).name: Path(p).name.split("-")[0] for p in paths}
    good = tmp_path / "labels.json"
    good.write_text(json.dumps(names))
    out = tmp_path / "o"
    assert run_cli(capsys, "regime", "fit", *paths, "--labels", good, "--out", out, *FAST)[0] == 0
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**names, "ghost.jsonl": "baseline"}))
    err = error_line(capsys, "regime", "fit", *paths, "--labels", unknown, "--out", tmp_path / "o2", *FAST)
    assert err.startswith(
        f"lorascope: error: {unknown}: key ghost.jsonl: names no run given on the command line"
    )
    partial = tmp_path / "partial.csv"
    partial.write_text("run,label\n" + "".join(f"{k},{v}\n" for k, v in list(names.items())[1:]))
    err = error_line(capsys, "regime", "fit", *paths, "--labels", partial, "--out", tmp_path / "o3", *FAST)
    assert err == f"lorascope: error: {paths[0]}: the run has no label in {partial} (hint: add a row for it)"
    noheader = tmp_path / "nohead.csv"
    noheader.write_text("a,b\n")
    err = error_line(capsys, "regime", "fit", *paths, "--labels", noheader, "--out", tmp_path / "o4", *FAST)
    assert err == f"lorascope: error: {noheader}: a labels CSV starts with the header row `run,label`"
    assert not any((tmp_path / f"o{i}").exists() for i in (2, 3, 4))


def test_missing_label_key(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    err = error_line(
        capsys, "regime", "fit", *paths, "--label-key", "meta.nope", "--out", tmp_path / "o", *FAST
    )
    assert err.startswith(
        f"lorascope: error: {paths[0]}: no meta.nope in the run's run_start/config events (the label)"
    )


def test_out_dir_not_empty_is_refused(tmp_path, capsys, fitted):
    _, paths, _ = fitted
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("keep")
    err = error_line(capsys, "regime", "fit", *paths, "--label-key", "meta.regime", "--out", out, *FAST)
    assert err == f"lorascope: error: {out}: output folder exists and is not empty; choose a new path"
    assert sorted(p.name for p in out.iterdir()) == ["x"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(feature_set="other"), "key feature_set: unknown feature set 'other'"),
        (lambda m: m.update(feature_set=[1]), "key feature_set: unknown feature set [1]"),
        (lambda m: m.update(features=5), "key features: [] are not feature set geometry_7's"),
        (lambda m: m.update(n_runs="many"), "key n_runs: expected finite numbers of shape []"),
        (lambda m: m["ridge"].update(alpha=[1]), "key ridge.alpha: expected finite numbers of shape []"),
        (
            lambda m: m.update(feature_set="geometry_6"),
            "key features: [",
        ),
        (lambda m: m["features"].reverse(), "are not feature set geometry_7's"),
        (
            lambda m: m.update(schema="x/v1"),
            "not a regime model (schema 'x/v1', expected lorascope.regime-model/v1)",
        ),
        (lambda m: m["scaler"].update(std=[1.0]), "key scaler.std: expected finite numbers of shape [7]"),
        (lambda m: m.update(classes=["a", "a"]), "key classes: expected a list of ≥ 2 distinct class names"),
        (lambda m: m.update(early_frac=2), "key early_frac: must be in (0, 1], got 2.0"),
    ],
)
def test_bad_model_files(tmp_path, capsys, fitted, edit, message):
    _, paths, out = fitted
    model = json.loads((out / "regime-model.json").read_text())
    edit(model)
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(model))
    err = error_line(capsys, "regime", "classify", paths[0], "--model", bad)
    assert err.startswith(f"lorascope: error: {bad}: ") and message in err


def test_classify_a_run_without_geometry(tmp_path, capsys, fitted):
    _, _, out = fitted
    path = write_lines(
        tmp_path / "plain.jsonl", [record("train_step", s, loss=1.0) for s in range(0, 50, 10)]
    )
    err = error_line(capsys, "regime", "classify", path, "--model", out / "regime-model.json")
    assert err == (
        f"lorascope: error: {path}: cannot classify: no geometry events "
        "(log them with the geometry probe or LorascopeCallback)"
    )


def test_monitor_rule_flags_go_together(capsys, fitted):
    _, paths, _ = fitted
    err = error_line(capsys, "monitor", paths[0], "--expect-regime", "baseline")
    assert err == "lorascope: error: --regime-model and --expect-regime go together"


@pytest.mark.slow
def test_report_shows_regime_json_and_geometry_series(tmp_path, capsys, fitted):
    pytest.importorskip("matplotlib")
    _, paths, out = fitted
    page = tmp_path / "report.html"
    code, _, err = run_cli(capsys, "report", out / "regime.json", out, paths[0], "-o", page)
    assert code == 0, err
    html = page.read_text(encoding="utf-8")
    assert re.findall(r'data-kind="([a-z_]+)"', html) == ["regime", "regime", "run"]
    for caption in (
        "Early-window features by regime",
        "Leave-one-group-out confusion matrices",
        "DFA exponents by regime",
        "Training geometry",
    ):
        assert f'aria-label="{caption}"' in html
    figures = re.findall(r'<figure class="plot">(.*?)</figure>', html, re.S)
    assert all("<table>" in f for f in figures)


def test_report_refuses_a_broken_regime_json(tmp_path, capsys, fitted):
    _, _, out = fitted
    doc = json.loads((out / "regime.json").read_text())
    del doc["sets"]
    bad = tmp_path / "regime.json"
    bad.write_text(json.dumps(doc))
    err = error_line(capsys, "report", bad, "-o", tmp_path / "r.html")
    assert err == f"lorascope: error: {bad}: sets: missing"


def test_without_the_extra_the_error_says_what_to_install(tmp_path, capsys, fitted, monkeypatch):
    import sys

    _, paths, _ = fitted
    monkeypatch.setitem(sys.modules, "sklearn.feature_selection", None)
    err = error_line(capsys, "regime", "fit", *paths, "--label-key", "meta.regime", "--out", tmp_path / "o")
    assert err == (
        "lorascope: error: lorascope regime fit needs scikit-learn, which is not installed "
        "(pip install 'lorascope[regime]')"
    )
    assert not (tmp_path / "o").exists()


def test_unfinished_runs_are_flagged(tmp_path, capsys):
    path = write_lines(tmp_path / "live.jsonl", [geometry(s) for s in range(0, 101, 10)])
    code, out, err = run_cli(capsys, "regime", "features", path, "--json")
    assert code == 0 and json.loads(out)["runs"][0]["finished"] is False
    assert err == (
        f"warning: {path}: no run_end event (still running?): its window is 0.2 × the last step "
        "logged so far (window end step 20)\n"
    )


def test_labels_from_yaml_and_csv_by_run_id(tmp_path, capsys, fitted):
    pytest.importorskip("yaml")
    _, paths, _ = fitted
    by_id = {Path(p).stem: Path(p).stem.split("-")[0] for p in paths}  # run ids are REGIME-SEED
    yml = tmp_path / "labels.yaml"
    yml.write_text("".join(f"{k}: {v}\n" for k, v in by_id.items()))
    assert run_cli(capsys, "regime", "fit", *paths, "--labels", yml, "--out", tmp_path / "a", *FAST)[0] == 0
    table = tmp_path / "labels.csv"
    table.write_text("run,label\n" + "".join(f"{p},{Path(p).stem.split('-')[0]}\n" for p in paths))
    assert run_cli(capsys, "regime", "fit", *paths, "--labels", table, "--out", tmp_path / "b", *FAST)[0] == 0
    a = json.loads((tmp_path / "a" / "regime.json").read_text())
    b = json.loads((tmp_path / "b" / "regime.json").read_text())
    assert (
        [r["label"] for r in a["runs"]]
        == [r["label"] for r in b["runs"]]
        == [Path(p).stem.split("-")[0] for p in paths]
    )
    assert a["config"]["labels_file"] == str(yml)


def test_monitor_regime_rule_says_when_it_cannot_check(tmp_path, capsys, fitted):
    _, _, out = fitted
    plain = write_lines(
        tmp_path / "plain.jsonl", [record("train_step", s, loss=1.0) for s in range(0, 401, 10)]
    )
    code, text, _ = run_cli(
        capsys,
        "monitor",
        plain,
        "--regime-model",
        out / "regime-model.json",
        "--expect-regime",
        "baseline",
        "--json",
    )
    alerts = [a for a in json.loads(text)["alerts"] if a["code"].startswith("REGIME")]
    assert code == 0 and [(a["code"], a["severity"]) for a in alerts] == [("REGIME_UNCHECKED", "info")]
    assert alerts[0]["message"] == (
        "the regime rule could not read the early window (steps ≤ 80): cannot classify: no geometry events "
        "(log them with the geometry probe or LorascopeCallback)"
    )
    err = error_line(
        capsys, "monitor", plain, "--regime-model", out / "regime-model.json", "--expect-regime", "nope"
    )
    assert err.startswith(
        f"lorascope: error: {out / 'regime-model.json'}: --expect-regime 'nope' is not a regime"
    )


def test_features_for_chosen_sets(tmp_path, capsys):
    path = write_lines(
        tmp_path / "nosc.jsonl", [geometry(s, spectral_complexity=None) for s in range(0, 101, 10)]
    )
    doc = json.loads(run_cli(capsys, "regime", "features", path, "--json")[1])
    assert doc["runs"][0]["excluded"] == "geometry spectral_complexity missing at step 0"
    doc = json.loads(run_cli(capsys, "regime", "features", path, "--json", "--sets", "geometry_6,loss")[1])
    assert doc["runs"][0]["excluded"] is None and "spectral_complexity_mean" not in doc["runs"][0]["values"]
    err = error_line(capsys, "regime", "features", path, "--sets", "geometry_9")
    known = "geometry_6, geometry_7, loss, spectral"
    assert err == f"lorascope: error: unknown feature set(s) geometry_9; known: {known}"
