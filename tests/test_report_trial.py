"""lorascope report on the fair test's summary (schema lorascope.gid-trial/v1): recognised by its
schema alone, every verdict and per-seed accuracy on the page, plots drawn, a bad key named."""

from __future__ import annotations

import copy
import json

import pytest
from test_report import Tables, embedded, kinds, report_cli

from lorascope.errors import FormatError
from lorascope.report import build_report
from lorascope.report.inputs import classify
from lorascope.report.sections import SECTIONS

TASKS = ("sentiment", "party")
METHODS = {  # method -> (label, trainable params, chosen lr, offset of its test accuracy)
    "lora": ("LoRA r=8", 166658, 1e-3, 0.0),
    "ralora": ("RaLoRA r=8", 166658, 5e-3, 0.004),
    "full": ("full fine-tuning", 17390594, 2e-4, 0.03),
}
SEEDS = (0, 1, 2)


def accuracy(task: str, method: str, seed: int) -> float:
    """Distinct, exactly representable accuracies (multiples of 1/1024)."""
    base = {"sentiment": 0.75, "party": 0.625}[task] + METHODS[method][3]
    return round((base + 0.0078125 * seed) * 1024) / 1024


def plateau(before: float, last: float, rise: float) -> dict:
    return {"step_before": 200, "val_before": before, "step_last": 300, "val_last": last, "rise": rise}


def trial_doc() -> dict:
    methods = []
    for t in TASKS:
        for m, (label, params, lr, _) in METHODS.items():
            accs = [accuracy(t, m, s) for s in SEEDS]
            mean = sum(accs) / len(accs)
            std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5
            curve = [[100, mean - 0.05], [200, mean - 0.01], [300, mean - 0.005]]
            methods.append({
                "task": t, "method": m, "label": label, "lr": lr, "trainable_params": params,
                "seeds": list(SEEDS), "test_per_seed": accs, "test_mean": mean, "test_std": std,
                "val_curve_mean": curve, "selection_val": {"0.001": mean, "0.005": mean - 0.01},
            })  # fmt: skip
    comparisons = [
        {
            "a": "ralora", "b": "lora", "n_pairs": 6, "diff_mean": 0.004,
            "per_task_diff": {"sentiment": 0.004, "party": 0.004}, "pairs": [], "p": 0.0123, "t": 3.1,
            "ci95": [0.0011, 0.0069], "wilcoxon_p": 0.03125, "question": "does RaLoRA beat uniform LoRA?",
            "p_holm": 0.0246, "verdict": "ralora beats lora",
        },
        {
            "a": "full", "b": "ralora", "n_pairs": 6, "diff_mean": -0.0021,
            "per_task_diff": {"sentiment": 0.0013, "party": -0.0055}, "pairs": [], "p": 0.41, "t": -0.9,
            "ci95": [-0.0087, 0.0045], "wilcoxon_p": 0.5625, "question": "a second comparison",
            "p_holm": 0.41, "verdict": "no evidence of a difference",
        },
    ]  # fmt: skip
    return {
        "schema": "lorascope.gid-trial/v1",
        "title": "Rank placed by gradient dimensionality vs uniform LoRA, equal parameters",
        "protocol": {
            "steps": 300,
            "batch": 8,
            "max_len": 32,
            "model": "MiniLM",
            "lr_grid": [2e-4, 1e-3, 5e-3],
            "alpha": 0.05,
            "test": "two-sided paired t",
        },
        "tasks": list(TASKS),
        "methods": methods,
        "comparisons": comparisons,
        "plateau": {"sentiment": plateau(0.8, 0.805, 0.005), "party": plateau(0.6, 0.625, 0.025)},
        "runs": 42,
        "cpu_s_total": 5400.0,
        "all_finite": True,
    }


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_summary_json_is_recognised_by_its_schema_only(tmp_path):
    f = write(tmp_path / "summary.json", trial_doc())
    assert classify(str(f), SECTIONS)[0] is SECTIONS["gid_trial"]
    other = write(tmp_path / "summary.json", {"runs": 3})  # the name alone marks nothing
    with pytest.raises(FormatError, match=r"not a report lorascope reads \(no schema field; expected"):
        classify(str(other), SECTIONS)


def test_page_shows_verdicts_per_seed_values_and_plots(tmp_path):
    doc = trial_doc()
    page = build_report([str(write(tmp_path / "summary.json", doc))]).html
    assert kinds(page) == ["gid_trial"] and embedded(page)[1] == doc
    assert page.count("<svg") == 3  # test accuracy, validation curves, comparisons
    facts = "<dt>ralora vs lora</dt><dd>ralora beats lora</dd>"
    assert facts in page and "<dt>full vs ralora</dt><dd>no evidence of a difference</dd>" in page
    for key, value in (("CPU-hours", "1.5"), ("runs", "42"), ("seeds", "0, 1, 2"), ("steps", "300")):
        assert f"<dt>{key}</dt><dd>{value}</dd>" in page
    assert "<dt>learning-rate grid</dt><dd>0.0002, 0.001, 0.005</dd>" in page
    tables = Tables(page).tables
    rows = tables["Methods: chosen learning rate and test accuracy"]
    assert len(rows) == len(TASKS) * len(METHODS)
    for row in rows:
        task, method = row[0], row[1]
        expected = ", ".join(f"{s}: {accuracy(task, method, s):.4g}" for s in SEEDS)
        assert row[2] == METHODS[method][0] and row[7] == expected
        assert (
            row[3] == {1e-3: "0.001", 5e-3: "0.005", 2e-4: "0.0002"}[METHODS[method][2]]
            and int(row[4]) == METHODS[method][1]
        )
    comparisons = tables["Comparisons"]
    assert [r[0] for r in comparisons] == ["ralora vs lora", "full vs ralora"]
    assert comparisons[0][2:] == [
        "6", "0.004", "[+0.0011, +0.0069]", "0.0123", "0.0246", "0.03125",
        "sentiment +0.0040; party +0.0040", "ralora beats lora",
    ]  # fmt: skip
    assert comparisons[1][-1] == "no evidence of a difference"
    assert "party: 0.6000 at step 200, 0.6250 at step 300 (rise +0.0250): still rising." in page
    assert "sentiment: 0.8000 at step 200, 0.8050 at step 300 (rise +0.0050): stopped rising" in page
    assert "full fine-tuning mean (ceiling)" in page  # the ceiling is drawn and named in the legend


def test_through_the_cli(tmp_path, capsys):
    f = write(tmp_path / "summary.json", trial_doc())
    out = tmp_path / "r.html"
    code, _, err = report_cli(capsys, f, "-o", out)
    assert code == 0, err
    page = out.read_text(encoding="utf-8")
    assert "ralora beats lora" in page and "<svg" in page and kinds(page) == ["gid_trial"]


def _broken(edit):
    doc = trial_doc()
    edit(doc)
    return doc


BAD = [
    (lambda d: d["methods"][2].pop("test_mean"), "methods[2].test_mean: missing"),
    (lambda d: d["comparisons"][1].pop("verdict"), "comparisons[1].verdict: missing"),
    (lambda d: d.pop("tasks"), "tasks: missing"),
    (
        lambda d: d["methods"][0]["test_per_seed"].append(0.5),
        "methods[0].test_per_seed: expected one accuracy per seed (3), got 4",
    ),
    (
        lambda d: d["methods"][1].update(val_curve_mean=[[100, "x"]]),
        "methods[1].val_curve_mean: expected a list of [step, accuracy] pairs, got a list",
    ),
    (
        lambda d: d["protocol"].update(steps="300"),
        "protocol.steps: expected an integer, got the string '300'",
    ),
    (lambda d: d["plateau"]["party"].pop("rise"), "plateau.party.rise: missing"),
    (lambda d: d["methods"][3].pop("seeds"), "methods[3].seeds: missing"),
    (lambda d: d.update(tasks=["a", 1]), "tasks: expected a list of strings, got a list"),
]


@pytest.mark.parametrize(("edit", "problem"), BAD)
def test_a_bad_key_is_one_line_naming_the_file_and_key(tmp_path, capsys, edit, problem):
    f = write(tmp_path / "summary.json", _broken(edit))
    out = tmp_path / "r.html"
    code, stdout, err = report_cli(capsys, f, "-o", out)
    assert (code, stdout, err) == (2, "", f"lorascope: error: {f}: {problem}\n")
    assert not out.exists()


def test_without_methods_or_comparisons_still_renders(tmp_path):
    doc = copy.deepcopy(trial_doc())
    doc["comparisons"], doc["plateau"] = [], {}
    page = build_report([str(write(tmp_path / "summary.json", doc))]).html
    assert page.count("<svg") == 2 and "No comparisons." in page
    doc["methods"] = []
    page = build_report([str(write(tmp_path / "summary.json", doc))]).html
    assert "<svg" not in page and "No methods." in page
