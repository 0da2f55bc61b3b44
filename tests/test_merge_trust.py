"""merge you can trust: inputs named from 1 with their files, no NaN figure, lossy merges flagged
(--max-error), plans bound to their adapters (fingerprints), mixed dtypes merged exactly."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import layer_names, peft_config, quantize, write_peft

from lorascope.cli.main import main
from lorascope.formats import load

SRC = Path(__file__).resolve().parents[1] / "src" / "lorascope"
NAMES = layer_names(2)


def run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main([str(x) for x in argv])
    cap = capsys.readouterr()
    return code, cap.out, [line for line in cap.err.splitlines() if line.strip()]


def adapter(d: Path, seed: int, *, dtype="fp32", names=NAMES, r=4, big=1.0) -> Path:
    rng = np.random.default_rng(seed)
    layers = {n: (rng.standard_normal((r, 10)) * big, rng.standard_normal((12, r)) * big) for n in names}
    return write_peft(d, layers, dtype=dtype, config=peft_config(r=r, lora_alpha=2 * r))


def stored(d: Path, name: str) -> np.ndarray:
    """ΔW from the stored values in float64 (the ground truth a merge is checked against)."""
    delta = load(d).delta(name)
    return delta.scale * np.asarray(delta.up, np.float64) @ np.asarray(delta.down, np.float64)


# ---- errors name the adapter (from 1) and its file; never 'compress' ------------------------------


def test_nonfinite_input_names_adapter_2_and_its_path(tmp_path, capsys):
    a = adapter(tmp_path / "a", 0)
    b = adapter(tmp_path / "b", 1)
    w = b / "adapter_model.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-4:] = np.array([np.nan], "<f4").tobytes()  # last value of the last tensor
    w.write_bytes(bytes(raw))
    code, out, err = run(capsys, "merge", a, b, "-o", tmp_path / "m", "-q")
    assert (code, out, len(err)) == (2, "", 1)
    assert err[0].startswith(f"lorascope: error: adapter 2 ({b}): layer ") and "contains NaN or Inf" in err[0]
    assert not (tmp_path / "m").exists()


def _raised_strings(path: Path) -> list[str]:
    """Every string constant inside a `raise` statement of a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            out += [
                c.value
                for c in ast.walk(node.exc)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
    return out


@pytest.mark.parametrize(
    "module",
    ["merge/execute.py", "merge/methods.py", "merge/checks.py", "merge/fingerprint.py", "cli/merge.py"],
)
def test_no_merge_error_names_compress(module):
    texts = _raised_strings(SRC / module)
    assert texts and not [t for t in texts if "compress" in t.lower()]


def test_overflowing_merge_is_an_error_not_a_nan_figure(tmp_path, capsys):
    a = adapter(tmp_path / "a", 0, dtype="fp64", big=1e160)  # ΔW entries ~1e320: beyond float64
    b = adapter(tmp_path / "b", 1, dtype="fp64", big=1e160)
    code, out, err = run(capsys, "merge", a, b, "-o", tmp_path / "m", "--json", "-q")
    assert (code, out, len(err)) == (2, "", 1) and "not finite" in err[0] and "nan" not in err[0].lower()


def test_huge_finite_factors_merge_exactly(tmp_path, capsys):
    """1e200 (down) with 1e-200 (up): ΔW of order 1, merged and checked without overflow."""
    rng = np.random.default_rng(3)
    layers = {n: (rng.standard_normal((4, 10)) * 1e200, rng.standard_normal((12, 4)) * 1e-200) for n in NAMES}
    a = write_peft(tmp_path / "a", layers, dtype="fp64", config=peft_config(r=4, lora_alpha=8))
    b = adapter(tmp_path / "b", 1, dtype="fp64")
    code, out, _ = run(capsys, "merge", a, b, "--weights", "1,0.5", "-o", tmp_path / "m", "--json", "-q")
    assert code == 0 and json.loads(out)["summary"]["max_rel_error"] < 1e-12
    for n in NAMES:
        want = stored(a, n) + 0.5 * stored(b, n)
        np.testing.assert_allclose(
            stored(tmp_path / "m", n), want, rtol=1e-12, atol=1e-12 * np.abs(want).max()
        )


# ---- --max-error ------------------------------------------------------------------------------


def test_lossy_merge_is_flagged_with_the_exact_error(tmp_path, capsys):
    a, b = adapter(tmp_path / "a", 0), adapter(tmp_path / "b", 1)
    argv = ["merge", a, b, "--method", "svd", "--rank", "1", "--json", "-q"]
    code, out, _ = run(capsys, *argv, "-o", tmp_path / "m")
    data = json.loads(out)
    for layer in data["layers"]:  # the figure is the dense truncation error of Σ ΔWᵢ
        s = np.linalg.svd(stored(a, layer["name"]) + stored(b, layer["name"]), compute_uv=False)
        assert layer["rel_error"] == pytest.approx(np.sqrt(np.sum(s[1:] ** 2) / np.sum(s**2)), rel=1e-5)
    assert code == 1 and data["summary"]["over_max_error"] == [x["name"] for x in data["layers"]]
    code, out, _ = run(capsys, *argv[:-2], "-o", tmp_path / "t")
    assert code == 1 and re.search(r"LOSSY: [1-4] of 4 layers lost more than 0\.05 ", out)
    code, out, _ = run(capsys, *argv, "-o", tmp_path / "m2", "--max-error", "0.99")
    assert code == 0 and json.loads(out)["summary"]["over_max_error"] == []
    code, _, err = run(capsys, "merge", a, b, "-o", tmp_path / "m3", "--max-error", "-1")
    assert code == 2 and "--max-error must be a number ≥ 0" in err[0]


def test_merge_audit_says_when_its_recommendation_is_lossy(tmp_path, capsys):
    a = adapter(tmp_path / "a", 0)
    rng = np.random.default_rng(5)
    layers = {n: (rng.standard_normal((4, 10)), rng.standard_normal((12, 4))) for n in NAMES}
    src = load(a)
    for n in NAMES:  # the negated update plus noise: conflicting, so dare_ties is recommended
        d = src.delta(n)
        layers[n] = (np.asarray(d.down) + 0.1 * layers[n][0], -np.asarray(d.up) + 0.1 * layers[n][1])
    b = write_peft(tmp_path / "b", layers, config=peft_config(r=4, lora_alpha=8))
    code, out, _ = run(capsys, "merge-audit", a, b, "--json", "-q", "--plan", tmp_path / "p.json")
    data = json.loads(out)
    recs = [x["recommendation"] for x in data["layers"]]
    assert code == 0 and {r["method"] for r in recs} - {"linear"}
    for r in recs:
        assert any(x.startswith("lossy:") for x in r["reasons"]) == (r["method"] != "linear")
    plan = json.loads((tmp_path / "p.json").read_text())
    assert any(n.startswith("lossy:") for n in plan["notes"])
    code, out, _ = run(capsys, "merge", a, b, "--plan", tmp_path / "p.json", "-o", tmp_path / "m")
    assert code == 0 and "lossy by method: 4 of 4 layers (dare_ties)" in out and "LOSSY" not in out
    argv = ["merge", a, b, "--plan", tmp_path / "p.json", "--max-error", "0.05", "-o", tmp_path / "m2"]
    code, out, _ = run(capsys, *argv)
    assert code == 1 and re.search(r"LOSSY: [1-4] of 4 layers lost more than 0\.05 ", out)


# ---- plan fingerprints ------------------------------------------------------------------------


def test_plan_fingerprints_bind_the_plan_to_its_adapters(tmp_path, capsys):
    a, b, c = (adapter(tmp_path / x, i) for i, x in enumerate("abc"))
    plan = tmp_path / "p.json"
    assert run(capsys, "merge-audit", a, b, "--plan", plan, "-q")[0] == 0
    prints = json.loads(plan.read_text())["fingerprints"]
    sha = hashlib.sha256()
    sha.update(
        b"adapter_model.safetensors\0"
        + hashlib.sha256((b / "adapter_model.safetensors").read_bytes()).digest()
    )
    assert len(prints) == 2 and prints[1]["weights_sha256"] == sha.hexdigest() and prints[1]["n_layers"] == 4
    assert run(capsys, "merge", a, b, "--plan", plan, "-o", tmp_path / "ok", "-q")[0] in (0, 1)
    code, _, err = run(capsys, "merge", b, a, "--plan", plan, "-o", tmp_path / "m1", "-q")
    assert code == 2 and len(err) == 1 and "in another order: adapter 1 (" in err[0] and str(plan) in err[0]
    code, _, err = run(capsys, "merge", a, c, "--plan", plan, "-o", tmp_path / "m2", "-q")
    assert code == 2 and f"other adapters: adapter 2 ({c}) differs from the plan's (weights)" in err[0]
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    # the same adapter retrained (same layers and shapes, other values) is another adapter
    adapter(tmp_path / "b2", 9)
    code, _, err = run(capsys, "merge", a, tmp_path / "b2", "--plan", plan, "-o", tmp_path / "m3", "-q")
    assert code == 2 and "(weights)" in err[0]
    argv = ["merge", b, a, "--plan", plan, "-o", tmp_path / "m4", "-q", "--ignore-fingerprints"]
    assert run(capsys, *argv)[0] in (0, 1)


def test_plan_without_fingerprints_is_merged_with_a_note(tmp_path, capsys):
    a, b = adapter(tmp_path / "a", 0), adapter(tmp_path / "b", 1)
    (tmp_path / "p.json").write_text(json.dumps({"weights": [1, 1]}))
    code, out, _ = run(capsys, "merge", a, b, "--plan", tmp_path / "p.json", "-o", tmp_path / "m")
    assert code == 0 and "note: the plan carries no fingerprints" in out
    code, _, err = run(capsys, "merge", a, b, "-o", tmp_path / "n", "--ignore-fingerprints")
    assert code == 2 and "--ignore-fingerprints applies to --plan" in err[0]


@pytest.mark.parametrize("bad", [[{"format": 1.5}], "x", [{"colour": "red"}, {}]])
def test_malformed_fingerprints_are_refused(tmp_path, capsys, bad):
    a, b = adapter(tmp_path / "a", 0), adapter(tmp_path / "b", 1)
    (tmp_path / "p.json").write_text(json.dumps({"weights": [1, 1], "fingerprints": bad}))
    code, _, err = run(capsys, "merge", a, b, "--plan", tmp_path / "p.json", "-o", tmp_path / "m")
    assert code == 2 and "key fingerprints: must be a list of 2 mappings" in err[0]


# ---- mixed dtypes: Σ wᵢ·ΔWᵢ to the output dtype's precision -------------------------------------


def test_mixed_dtypes_merge_exactly(tmp_path, capsys):
    only_b = "model.layers.9.mlp.down_proj"
    a = adapter(tmp_path / "a", 0, dtype="fp32")
    b = adapter(tmp_path / "b", 1, dtype="bf16", names=[*NAMES, only_b])
    code, out, _ = run(capsys, "merge", a, b, "--weights", "1,0.3", "-o", tmp_path / "m", "--json", "-q")
    assert code == 0
    merged = load(tmp_path / "m")
    for name in NAMES:
        want = stored(a, name) + 0.3 * stored(b, name)
        got = stored(tmp_path / "m", name)
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)  # fp32 output
    want = 0.3 * stored(b, only_b)
    got = stored(tmp_path / "m", only_b)
    assert merged.info(only_b).dtype == "bf16"
    # the bf16 factors are written unchanged (weight folded into alpha): exact to the stored scale
    assert np.linalg.norm(got - want) <= 1e-7 * np.linalg.norm(want)
    d_in, d_out = load(b).delta(only_b), merged.delta(only_b)
    assert np.array_equal(d_in.up, d_out.up) and np.array_equal(d_in.down, d_out.down)
    # what rounding 0.3·s·B to bf16 again would have cost (the behaviour this replaces)
    twice = quantize(0.3 * d_in.scale * np.asarray(d_in.up, np.float64), "bf16") @ np.asarray(d_in.down)
    assert np.linalg.norm(twice - want) > 1e-4 * np.linalg.norm(want)
