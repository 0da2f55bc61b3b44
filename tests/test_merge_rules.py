"""merge's rules as a user meets them: a plan merge-audit recommends merges within merge's own
tolerance; dense methods report their loss instead of failing (one rule, --max-error checks it);
every layer list in natural order; progress on a terminal only; the written rank is the planned one."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import peft_config, random_factors, write_peft

from lorascope.cli.main import main
from lorascope.formats import load
from lorascope.merge import LayerPlan, MergePlan, merge_files
from lorascope.merge.execute import MergeOptions, merge_lazy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm-rt-r64"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(x) for x in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def dense(path: Path, name: str) -> np.ndarray:
    d = load(path).delta(name)
    return d.scale * np.asarray(d.up, np.float64) @ np.asarray(d.down, np.float64)


# ---- a recommended plan merges within merge's tolerance ------------------------------------------


@pytest.mark.skipif(not EXAMPLE.is_dir(), reason="examples/minilm-rt-r64 not present")
def test_adapter_and_its_compressed_copy_merge_as_recommended(tmp_path, capsys):
    copy = tmp_path / "copy"
    assert run(capsys, "compress", EXAMPLE, "--energy", "0.9", "-o", copy)[0] == 0
    plan = tmp_path / "plan.json"
    code, out, _ = run(capsys, "merge-audit", EXAMPLE, copy, "--plan", plan, "--json", "-q")
    audit = json.loads(out)
    assert code == 0 and audit["summary"]["verdicts"]["REDUNDANT"] == audit["summary"]["n_shared"]
    code, out, _ = run(capsys, "merge", EXAMPLE, copy, "--plan", plan, "-o", tmp_path / "m", "--json", "-q")
    merged = json.loads(out)
    assert code == 0 and merged["summary"]["over_max_error"] == []
    assert {x["method"] for x in merged["layers"]} == {"svd"}
    for layer in merged["layers"][:3]:  # the written layer: the average of the two, within 2 %
        name = layer["name"]
        want = 0.5 * (dense(EXAMPLE, name) + dense(copy, name))
        got = dense(tmp_path / "m", name)
        assert np.linalg.norm(got - want) <= 0.0201 * np.linalg.norm(want)
        assert layer["rank"] <= 64


# ---- dense methods: the loss is the method's ------------------------------------------------------


@pytest.fixture
def pair(tmp_path, rng):
    names = [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1, 2, 10, 11)]
    out = []
    for side in "ab":
        layers = {n: random_factors(rng, 40, 32, 4) for n in sorted(names)}  # text order, as on disk
        out.append(write_peft(tmp_path / side, layers, config=peft_config(r=4, lora_alpha=8)))
    return out[0], out[1], names


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
def test_dense_method_reports_its_loss_and_exits_0(pair, tmp_path, capsys, method):
    a, b, names = pair
    code, out, _ = run(capsys, "merge", a, b, "--method", method, "-o", tmp_path / "m", "-q")
    line = next(x for x in out.splitlines() if x.startswith("lossy by method:"))
    assert code == 0 and "LOSSY" not in out
    assert re.match(rf"lossy by method: 5 of 5 layers \({method}\) sparsify ΔW", line)
    code, out, _ = run(capsys, "merge", a, b, "--method", method, "-o", tmp_path / "j", "-q", "--json")
    data = json.loads(out)
    errs = [x["rel_error"] for x in data["layers"]]
    lossy = data["summary"]["lossy_by_method"]
    assert code == 0 and min(errs) > 0.01  # a real loss, not reported as a failure
    assert lossy == {
        "n_layers": 5,
        "methods": [method],
        "max_rel_error": max(errs),
        "mean_rel_error": pytest.approx(np.mean(errs), rel=1e-12),
        "checked": False,
    }
    assert data["summary"]["max_error"] is None and data["summary"]["default_max_error"] == 0.05
    # a tolerance the user sets applies to every layer
    code, out, _ = run(capsys, "merge", a, b, "--method", method, "--max-error", "0.01", "-o", tmp_path / "x")
    assert code == 1 and "LOSSY: 5 of 5 layers lost more than 0.01" in out and "lossy by method" not in out


def test_factor_methods_keep_the_default_tolerance(pair, tmp_path, capsys):
    a, b, _ = pair
    code, out, _ = run(capsys, "merge", a, b, "--method", "svd", "--rank", "1", "-o", tmp_path / "m")
    assert code == 1 and "LOSSY: 5 of 5 layers lost more than 0.05" in out
    code, out, _ = run(capsys, "merge", a, b, "-o", tmp_path / "l", "--json", "-q")
    assert code == 0 and json.loads(out)["summary"]["lossy_by_method"] is None


def test_merge_help_states_the_rule(capsys):
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: 0.05 for linear and svd layers; ties, dare_ties, dare_linear and magnitude_prune" in text
    assert "checked only when this option is given" in text


# ---- natural order --------------------------------------------------------------------------------


def test_layer_lists_are_in_natural_order(pair, tmp_path, capsys):
    a, b, names = pair  # the file stores them sorted as text: 0, 1, 10, 11, 2
    assert list(load(a).names) != names
    code, out, _ = run(capsys, "audit", a, "--json", "-q")
    assert [x["name"] for x in json.loads(out)["layers"]] == names
    code, out, _ = run(capsys, "merge-audit", a, b, "--json", "-q")
    data = json.loads(out)
    assert [x["name"] for x in data["layers"]] == names and list(data["plan"]["layers"]) == names
    code, out, _ = run(capsys, "merge-audit", a, b, "-q")
    rows = [line.split()[0] for line in out.splitlines() if line.startswith("model.layers.")]
    assert rows == names
    code, out, _ = run(capsys, "merge-audit", a, b, "--markdown", "-q")
    assert [m for m in re.findall(r"^\| `([^`]+)`", out, flags=re.M)] == names
    code, out, _ = run(capsys, "merge", a, b, "-o", tmp_path / "m", "--json", "-q")
    assert [x["name"] for x in json.loads(out)["layers"]] == names
    code, out, _ = run(capsys, "merge", a, b, "-o", tmp_path / "n", "--layers", "-q")
    assert [line.split()[0] for line in out.splitlines() if line.startswith("model.layers.")] == names


def test_dare_seeds_do_not_depend_on_the_output_order(pair, tmp_path):
    """DARE draws are seeded by the layer's index in adapter 1's file order (as before natural order)."""
    a, b, names = pair
    plan = MergePlan((1.0, 1.0), LayerPlan("dare_linear", density=0.5), seed=3)
    merge_files([a, b], tmp_path / "m", plan)
    file_order = list(load(a).names)
    name = names[-1]  # model.layers.11: index 3 in the file's text order
    rng = np.random.default_rng([3, file_order.index(name)])
    keep = [rng.random((40, 32), dtype=np.float32) < 0.5 for _ in range(2)]
    want = sum(k * dense(p, name) / 0.5 for k, p in zip(keep, (a, b), strict=True))
    u, s, vt = np.linalg.svd(want)
    want8 = (u[:, :8] * s[:8]) @ vt[:8]
    np.testing.assert_allclose(dense(tmp_path / "m", name), want8, atol=1e-5 * np.abs(want8).max())


# ---- progress -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tty", "quiet", "shown"), [(True, False, True), (True, True, False), (False, False, False)]
)
def test_merge_progress_only_on_a_terminal(pair, tmp_path, capsys, monkeypatch, tty, quiet, shown):
    a, b, _ = pair
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    argv = ["merge", a, b, "--method", "ties", "-o", tmp_path / "m", *(["-q"] if quiet else [])]
    code, _, err = run(capsys, *argv)
    assert code == 0
    assert ("5/5 model.layers." in err) == shown and ("1/5" in err) == shown


def test_progress_counts_every_layer_once_energy_plans_too(pair):
    a, b, _ = pair
    seen: list[tuple[int, int]] = []
    plan = MergePlan((1.0, 1.0), LayerPlan("svd", energy=0.9))
    options = MergeOptions(progress=lambda i, n, name: seen.append((i, n)))
    lazy, _ = merge_lazy([load(a), load(b)], plan, options)
    list(lazy.iter_deltas())
    assert seen == [(i, 5) for i in range(1, 6)]


# ---- the written rank is the planned rank (one rule) ------------------------------------------------


@pytest.mark.parametrize(
    "lp",
    [
        LayerPlan("linear"),
        LayerPlan("linear", compress_first={0: 2}),
        LayerPlan("svd"),
        LayerPlan("svd", rank=3),
        LayerPlan("svd", rank=50, compress_first={1: 1}),
        LayerPlan("ties", density=0.5),
        LayerPlan("ties", density=0.5, rank=3),
        LayerPlan("magnitude_prune", rank=100),
        LayerPlan("dare_linear", density=0.7),
    ],
)
def test_planned_rank_is_the_written_rank(pair, lp):
    a, b, _ = pair
    lazy, done = merge_lazy([load(a), load(b)], MergePlan((1.0, 0.5), lp))
    planned = {x.name: x.rank for x in lazy.layers}
    written = {d.name: d.down.shape[0] for d in lazy.iter_deltas()}
    assert planned == written and all(done[n][0].rank == r for n, r in written.items())
