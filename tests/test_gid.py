"""`lorascope gid` without torch: GID metrics against numpy SVD, plan arithmetic on hand-computed
cases, the RaLoRA format read as an exact LoRA (spectrum = union of the blocks' spectra), the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from lorascope.cli.main import main
from lorascope.errors import (
    ConfigError,
    FormatError,
    InputNotFoundError,
    InvalidArgumentError,
    LorascopeError,
    UnsupportedError,
)
from lorascope.formats import detect, load, save
from lorascope.formats.ralora import block_diagonal, diagonal_blocks
from lorascope.gid import (
    GidPlan,
    GidReport,
    LayerGid,
    PlanOptions,
    blocks_for,
    check_model_dir,
    energy_erank,
    gid_metrics,
    gradient_singular_values,
    make_plan,
    peft_plan,
    pro_ranks,
    ralora_plan,
    ralora_pro_plan,
    read_plan,
    read_report,
    read_rows,
)
from lorascope.spectral import lora_singular_values
from lorascope.types import Adapter, LayerInfo, LoraDelta


@pytest.mark.parametrize("shape", [(7, 5), (40, 90), (300, 70), (128, 128)])
def test_singular_values_and_erank_against_numpy_svd(rng, shape):
    g = rng.standard_normal(shape) @ np.diag(np.logspace(0, -3, shape[1]))  # (out, in), decaying
    want = np.linalg.svd(g, compute_uv=False)
    got = gradient_singular_values(g)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want[0])
    p = want / want.sum()
    q = want**2 / (want**2).sum()
    m = gid_metrics(got)
    assert m.gid == pytest.approx(math.exp(-np.sum(p * np.log(p))), rel=1e-10)
    assert m.gid_energy == pytest.approx(math.exp(-np.sum(q * np.log(q))), rel=1e-10)
    assert m.gid_energy < m.gid
    assert m.stable_rank == pytest.approx((want**2).sum() / want[0] ** 2, rel=1e-10)
    assert m.energy_rank_90 == int(np.searchsorted(np.cumsum(q), 0.9) + 1)
    assert m.numerical_rank == min(shape)


def test_erank_of_flat_and_rank_one_spectra():
    assert gid_metrics(np.ones(16)).gid == pytest.approx(16.0)
    assert gid_metrics(np.array([3.0, 0.0, 0.0])).gid == pytest.approx(1.0)
    assert energy_erank(np.zeros(4)) == 0.0 and gid_metrics(np.zeros(4)).gid == 0.0


def test_blocks_powers_of_two_clipping_and_divisibility():
    assert blocks_for(7.9, 8, 384, 384) == (1, None)  # gid < r: one block
    assert blocks_for(16.0, 8, 384, 384) == (2, None)
    assert blocks_for(63.9, 8, 384, 384) == (4, None)  # 2^⌊log2(7.99)⌋
    assert blocks_for(64.0, 8, 384, 384) == (8, None)
    assert blocks_for(10_000.0, 8, 4096, 4096) == (32, None)  # clipped at n_max
    assert blocks_for(10_000.0, 8, 4096, 4096, n_max=4) == (4, None)
    n, note = blocks_for(1000.0, 8, 384, 1536)  # 64 → n_max 32 → 384 = 2^7·3: 32 does not divide? it does
    assert n == 32 and note is None
    n, note = blocks_for(1000.0, 8, 300, 384)  # 300 = 4·75: 32 → 16 → 8 → 4
    assert n == 4 and note == "blocks reduced from 32 to 4: 32 does not divide (384, 300)"
    assert blocks_for(1000.0, 8, 7, 384)[0] == 1  # odd dimension: one block


LAYER_DOCS = [  # name, shape [out, in], gid, importance
    {"name": "a.q", "shape": [64, 64], "gid": 40.0, "importance": 3.0},
    {"name": "a.v", "shape": [64, 64], "gid": 8.0, "importance": 1.0},
    {"name": "b.up", "shape": [256, 64], "gid": 200.0, "importance": 4.0},
]
LAYERS = [LayerGid(**{**x, "shape": tuple(x["shape"])}) for x in LAYER_DOCS]


def test_ralora_plan_keeps_lora_parameters():
    plan = ralora_plan(LAYERS, PlanOptions(rank=4))
    t = plan.layers
    assert [t[n].blocks for n in ("a.q", "a.v", "b.up")] == [8, 2, 32]  # 2^⌊log2(10)⌋, 2, min(2^5·…, 32)
    assert t["b.up"].equivalent_rank == 128 and t["a.q"].lora_alpha == 8.0
    assert plan.params == plan.lora_params == 4 * (128 + 128 + 320)


def test_ralora_pro_ranks_by_hand():
    # P = r_ref·(√128 + √128 + √320); r_l = ⌊P·α_l/√(d_in+d_out)⌋
    opts = PlanOptions(rank=8, r_min=2, r_max=40)
    size = {"a.q": math.sqrt(128), "a.v": math.sqrt(128), "b.up": math.sqrt(320)}
    budget = 8 * sum(size.values())
    want = {
        n: math.floor(budget * imp / 8.0 / size[n]) for n, imp in (("a.q", 3.0), ("a.v", 1.0), ("b.up", 4.0))
    }
    assert want == {"a.q": 10, "a.v": 3, "b.up": 9}  # 324.13·(3/8)/11.31, ·(1/8)/11.31, ·(4/8)/17.89
    assert pro_ranks(LAYERS, opts) == want
    assert pro_ranks(LAYERS, PlanOptions(rank=8, r_min=10, r_max=20)) == {"a.q": 10, "a.v": 10, "b.up": 10}
    plan = ralora_pro_plan(LAYERS, opts)
    blocks = {k: v.blocks for k, v in plan.layers.items()}
    assert blocks == {"a.q": 4, "a.v": 2, "b.up": 16}  # 2^⌊log2(40/10)⌋, 2^⌊log2(8/3)⌋, 2^⌊log2(200/9)⌋
    assert plan.params == 10 * 128 + 3 * 128 + 9 * 320 == 4544 and plan.lora_params == 8 * 576
    assert plan.params_vs_lora == pytest.approx(plan.params / plan.lora_params)


def test_peft_plan_moves_rank_under_the_budget():
    plan = peft_plan(LAYERS, PlanOptions(rank=8, r_max=64))
    ranks = {k: v.r for k, v in plan.layers.items()}
    score = {"a.q": 120.0, "a.v": 8.0, "b.up": 800.0}
    budget = 8 * 576
    want = {n: math.floor(budget * s / 928.0 / (128 if n[0] == "a" else 320)) for n, s in score.items()}
    assert want == {"a.q": 4, "a.v": 0, "b.up": 12}
    assert ranks == {**want, "a.v": 1}  # lifted to r_min
    assert plan.params <= budget
    peft = plan.peft
    assert peft.rank_pattern == {k: r for k, r in ranks.items() if r != 8}
    assert all(peft.alpha_pattern[k] == 2 * r for k, r in peft.rank_pattern.items())


def test_plan_errors():
    with pytest.raises(InvalidArgumentError, match="plan options need rank ≥ 1"):
        ralora_plan(LAYERS, PlanOptions(rank=0))
    zero = [dataclasses.replace(x, importance=0.0) for x in LAYERS]
    with pytest.raises(InvalidArgumentError, match="RaLoRA-Pro needs a positive importance"):
        ralora_pro_plan(zero, PlanOptions())
    with pytest.raises(InvalidArgumentError, match="unknown plan method 'lora'"):
        make_plan(GidReport(layers=tuple(LAYERS)), "lora")


def _ralora_adapter(rng, n=4, r=2, out=12, inn=8, scale=1.5) -> tuple[Adapter, list[np.ndarray]]:
    a = rng.standard_normal((n, r, inn // n)).astype(np.float32)  # (n, r, in/n)
    b = rng.standard_normal((n, out // n, r)).astype(np.float32)  # (n, out/n, r)
    info = LayerInfo("m.layers.0.q", "linear", n * r, out, inn, scale, "fp32", extras={"blocks": n})
    delta = LoraDelta(info, block_diagonal(a), block_diagonal(b))
    blocks = [scale * b[i].astype(np.float64) @ a[i].astype(np.float64) for i in range(n)]
    return Adapter.from_deltas([delta], config={"base_model_name_or_path": "tiny"}), blocks


def test_ralora_format_round_trip_and_union_of_block_spectra(tmp_path, rng):
    adapter, blocks = _ralora_adapter(rng)
    path = save(adapter, tmp_path / "ra", format="ralora")
    assert detect(path) == "ralora"
    cfg = json.loads((path / "ralora_config.json").read_text())
    assert cfg["layers"]["m.layers.0.q"] == {"r": 2, "blocks": 4, "lora_alpha": 3.0, "kind": "linear"}
    back = load(path)
    info = back.layers[0]
    assert (info.rank, info.params, info.extras["blocks"], info.extras["block_rank"]) == (8, 2 * 20, 4, 2)
    d = back.delta(info.name)
    dense = np.zeros((12, 8))
    for i, blk in enumerate(blocks):
        dense[3 * i : 3 * i + 3, 2 * i : 2 * i + 2] = blk
    np.testing.assert_allclose(d.dense(), dense, rtol=1e-12, atol=1e-12)
    union = np.sort(np.concatenate([np.linalg.svd(x, compute_uv=False) for x in blocks]))[::-1]
    got = lora_singular_values(d.down, d.up, d.scale)
    np.testing.assert_allclose(got[: union.size], union, rtol=1e-6)


def test_audit_and_convert_read_ralora(tmp_path, rng, capsys):
    adapter, _ = _ralora_adapter(rng)
    path = save(adapter, tmp_path / "ra", format="ralora")
    assert main(["audit", str(path), "--json", "--layers"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["layers"][0]["rank"] == 8 and rep["layers"][0]["params"] == 40
    assert main(["convert", str(path), str(tmp_path / "p"), "--to", "peft"]) == 0
    peft = load(tmp_path / "p")
    np.testing.assert_allclose(peft.delta(peft.names[0]).dense(), load(path).delta(adapter.names[0]).dense())
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["r"] == 8


def test_ralora_writer_refuses_factors_that_are_not_block_diagonal(tmp_path, rng):
    info = LayerInfo("m.q", "linear", 4, 6, 4, 1.0, "fp32", extras={"blocks": 2})
    bad = Adapter.from_deltas([LoraDelta(info, rng.standard_normal((4, 4)), rng.standard_normal((6, 4)))])
    with pytest.raises(
        UnsupportedError, match=r"m\.q: cannot write it \(factors are not block-diagonal with 2"
    ):
        save(bad, tmp_path / "x", format="ralora")
    assert list(tmp_path.iterdir()) == []
    assert diagonal_blocks(np.ones((4, 4)), 2) is None


def test_ralora_reader_rejects_bad_configs(tmp_path, rng):
    adapter, _ = _ralora_adapter(rng)
    path = save(adapter, tmp_path / "ra", format="ralora")
    cfg_path = path / "ralora_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["layers"]["m.layers.0.q"]["blocks"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(
        FormatError, match=r"layer m\.layers\.0\.q: shapes A \[4, 2, 2\] / B \[4, 3, 2\] do not fit"
    ):
        load(path)
    cfg["layers"] = {}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="tensors not described in ralora_config.json"):
        load(path)


def _report(tmp_path) -> str:
    rep = {"schema": "lorascope.gid/v1", "model": "tiny", "rank": 8, "layers": LAYER_DOCS}
    p = tmp_path / "gid.json"
    p.write_text(json.dumps(rep))
    return str(p)


def test_cli_plan_from_report(tmp_path, capsys):
    rep = _report(tmp_path)
    out = str(tmp_path / "plan.json")
    assert main(["gid", "--report", rep, "--plan", "ralora", "--rank", "4", "--plan-out", out]) == 0
    text = capsys.readouterr().out
    assert "STARVED (GID/r = 50)" in text and "ralora: 2,304 trainable parameters vs 2,304" in text
    plan = read_plan(out)
    assert plan.model == "tiny" and plan.layers["b.up"].blocks == 32
    assert main(["gid", "--report", rep, "--plan", "peft", "--json"]) == 0
    assert "rank_pattern" in json.loads(capsys.readouterr().out)["plan"]["peft"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--report", "R"], "--report needs --plan ralora|ralora-pro|peft"),
        (
            ["--report", "R", "--plan", "ralora", "--rank", "0"],
            "plan options need rank ≥ 1, n_max ≥ 1 and 1 ≤ r_min ≤ r_max "
            "(got rank=0, n_max=32, r_min=1, r_max=64)",
        ),
        (
            ["--report", "R", "--plan", "ralora", "--plan-out", "R"],
            "R: output already exists; choose a new path",
        ),
        (
            ["MODEL", "--data", "d.jsonl", "--rank", "0"],  # before any calibration work
            "plan options need rank ≥ 1, n_max ≥ 1 and 1 ≤ r_min ≤ r_max "
            "(got rank=0, n_max=32, r_min=1, r_max=64)",
        ),
        (["MODEL"], "calibrating MODEL_DIR needs --data FILE"),
        (
            ["MODEL", "--data", "d.jsonl", "--plan-out", "p.json"],
            "--plan-out needs --plan ralora|ralora-pro|peft",
        ),
        (["MODEL", "--data", "d.jsonl", "--layers-per-pass", "0"], "--layers-per-pass must be ≥ 1"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    rep = _report(tmp_path)
    argv = [rep if a == "R" else a for a in argv]
    assert main(["gid", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"lorascope: error: {message.replace('R:', rep + ':')}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gid.json"]


def test_cli_refuses_one_file_for_report_and_plan(tmp_path, capsys):
    """-o and --plan-out on one path wrote the report, then refused the plan: a half-done run."""
    rep, same = _report(tmp_path), str(tmp_path / "both.json")
    argv = ["gid", "--report", rep, "--plan", "ralora", "-o", same, "--plan-out", same]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"lorascope: error: {same}: -o and --plan-out name the same file; give two paths\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gid.json"]


def test_cli_rejects_a_file_that_is_not_a_report(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "other"}')
    assert main(["gid", "--report", str(p), "--plan", "ralora"]) == 2
    assert (
        capsys.readouterr().err
        == f"lorascope: error: {p}: not a lorascope.gid/v1 file (its 'schema' field differs)\n"
    )


def test_planning_from_a_report_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    rep = _report(tmp_path)
    code = (
        "import sys\nfrom lorascope.cli.main import main\n"
        f"assert main(['gid', '--report', {rep!r}, '--plan', 'ralora-pro', '--json']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# --- typed results, user files read through lorascope.files / lorascope.validate ------------------

FULL_REPORT = {
    "schema": "lorascope.gid/v1",
    "model": "m",
    "definition": "d",
    "rank": 4,
    "calibration": {"steps": 2, "layers_per_pass": None, "passes": 1, "device": "cpu", "batch": 4},
    "timing": {"pass_s": 1.5, "spectra_s": 0.25},
    "memory": {"accumulator_bytes": 1024},
    "layers": [
        {
            "name": "a.q",
            "shape": [64, 64],
            "gid": 40.0,
            "gid_energy": 3.5,
            "numerical_rank": 64,
            "stable_rank": 1.25,
            "energy_rank_90": 3,
            "grad_norm": 0.5,
            "importance": 3.0,
            "starved": True,
        }
    ],
}


def test_report_and_plan_documents_round_trip_unchanged():
    rep = GidReport.from_json(FULL_REPORT)
    assert rep.layers[0].shape == (64, 64) and rep.calibration.batch == 4 and rep.memory.peak_bytes is None
    assert rep.to_json() == FULL_REPORT  # same keys, same order, no field added or lost
    assert list(rep.to_json()) == list(FULL_REPORT)
    plan = make_plan(GidReport(model="m", layers=tuple(LAYERS)), "peft", PlanOptions(rank=8))
    doc = json.loads(json.dumps(plan.to_json()))
    assert list(doc) == [
        "schema",
        "method",
        "options",
        "params",
        "lora_params",
        "params_vs_lora",
        "layers",
        "peft",
        "model",
    ]
    assert doc["options"] == {"rank": 8, "alpha": None, "n_max": 32, "r_min": 1, "r_max": 64}
    assert doc["layers"]["a.q"] == {
        "r": 4,
        "blocks": 1,
        "lora_alpha": 8.0,
        "shape": [64, 64],
        "equivalent_rank": 4,
        "params": 512,
        "gid": 40.0,
    }
    assert GidPlan.from_json(doc) == plan


@pytest.mark.parametrize(
    "edit, message",
    [
        (("layers", 0, "gid", "x"), "key layers.0.gid: must be a finite number, got 'x'"),
        (("layers", 0, "gid", -1.0), "key layers.0.gid: must be ≥ 0, got -1.0"),
        (("layers", 0, "shape", [64]), "key layers.0.shape: must be [out, in]: two integers ≥ 1, got [64]"),
        (("layers", 0, "importance", None), "key layers.0.importance: must be a finite number, got None"),
        (
            ("layers", 0, "colour", "red"),
            "key layers.0.colour: unknown key; known keys: name, shape, gid, "
            "gid_energy, numerical_rank, stable_rank, energy_rank_90, grad_norm, importance, starved",
        ),
        (("rank", None, None, 0), "key rank: must be an integer ≥ 1, got 0"),
        (("calibration", None, "steps", "2"), "key calibration.steps: must be an integer ≥ 1, got '2'"),
        (("layers", None, None, []), "key layers: must be a non-empty list of layer objects"),
        (("layers", 0, None, 3), "key layers.0: must be a JSON object, got 3"),
    ],
)
def test_cli_names_the_file_and_key_of_a_bad_report(tmp_path, capsys, edit, message):
    doc = json.loads(json.dumps(FULL_REPORT))
    top, index, key, value = edit
    if index is None and key is None:
        doc[top] = value
    elif index is None:
        doc[top][key] = value
    elif key is None:
        doc[top][index] = value
    else:
        doc[top][index][key] = value
    p = tmp_path / "gid.json"
    p.write_text(json.dumps(doc))
    assert main(["gid", "--report", str(p), "--plan", "ralora"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"lorascope: error: {p}: {message}\n"


def test_a_repeated_layer_name_is_refused(tmp_path, capsys):
    """Plans are keyed by layer name: a report naming a layer twice lost one of them silently."""
    doc = {"schema": "lorascope.gid/v1", "layers": [LAYER_DOCS[0], LAYER_DOCS[1], LAYER_DOCS[0]]}
    p = tmp_path / "gid.json"
    p.write_text(json.dumps(doc))
    assert main(["gid", "--report", str(p), "--plan", "ralora"]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {p}: key layers.2.name: repeats the name of layers.0, got 'a.q'\n"
    )


def test_a_missing_report_or_plan_file_says_how_to_make_one(tmp_path, capsys):
    p = tmp_path / "gid.json"
    assert main(["gid", "--report", str(p), "--plan", "ralora"]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {p}: GID report not found "
        "(hint: make one with: lorascope gid MODEL_DIR --data FILE -o gid.json)\n"
    )
    with pytest.raises(InputNotFoundError) as e:
        read_plan(tmp_path / "plan.json")
    assert str(e.value) == f"{tmp_path / 'plan.json'}: GID plan not found"
    assert e.value.hint == "make one with: lorascope gid --report gid.json --plan ralora --plan-out plan.json"


def test_a_bad_plan_file_names_the_key(tmp_path):
    plan = ralora_plan(LAYERS, PlanOptions(rank=4)).to_json()
    plan["layers"]["a.v"]["blocks"] = 0
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    with pytest.raises(ConfigError) as e:
        read_plan(p)
    assert str(e.value) == f"{p}: key layers.a.v.blocks: must be an integer ≥ 1, got 0"


def test_no_arguments_says_what_to_give(capsys):
    assert main(["gid"]) == 2
    assert capsys.readouterr().err == (
        "lorascope: error: give MODEL_DIR (a Hugging Face model folder to calibrate, with --data FILE) "
        "or --report gid.json (a report to plan from)\n"
    )
    assert main(["gid", "MODEL", "--report", "R"]) == 2
    assert capsys.readouterr().err == (
        "lorascope: error: give either MODEL_DIR (calibrate) or --report gid.json (plan), not both\n"
    )


def test_quiet_and_short_output_options(tmp_path, capsys):
    rep = _report(tmp_path)
    out = tmp_path / "again.json"
    assert main(["gid", "--report", rep, "--plan", "ralora", "-q", "-o", str(out)]) == 0
    assert capsys.readouterr().err == ""
    assert read_report(out) == read_report(rep)
    assert (
        main(["gid", "--report", rep, "--plan", "ralora", "--quiet", "--out", str(tmp_path / "b.json")]) == 0
    )
    assert main(["gid", "--report", rep, "--plan", "ralora", "-q", "--output", str(tmp_path / "c.json")]) == 0
    assert read_report(tmp_path / "c.json") == read_report(rep)
    missing = tmp_path / "nowhere" / "p.json"
    assert main(["gid", "--report", rep, "--plan", "ralora", "--plan-out", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {missing}: the folder {missing.parent} does not exist; create it first\n"
    )


def test_peft_plan_prints_a_lora_config_snippet(tmp_path, capsys):
    assert main(["gid", "--report", _report(tmp_path), "--plan", "peft", "--rank", "8"]) == 0
    out = capsys.readouterr().out
    snippet = out[out.index("from peft import LoraConfig") :]
    calls = {}
    namespace = {}
    code = snippet.replace("from peft import LoraConfig", "")
    exec(compile(code, "<snippet>", "exec"), {"LoraConfig": lambda **kw: calls.update(kw) or kw}, namespace)
    plan = peft_plan(LAYERS, PlanOptions(rank=8))
    assert calls == {
        "r": 8,
        "lora_alpha": 16.0,
        "target_modules": ["a.q", "a.v", "b.up"],
        "rank_pattern": {"a.q": 4, "a.v": 1, "b.up": 12},
        "alpha_pattern": {"a.q": 8.0, "a.v": 2.0, "b.up": 24.0},
    }
    assert calls["rank_pattern"] == dict(plan.peft.rank_pattern)


# --- the data file ----------------------------------------------------------------------------


def _data(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_read_rows_jsonl_and_csv(tmp_path):
    p = _data(tmp_path, "d.jsonl", '{"text": "a", "label": 1, "id": 7}\n\n{"text": "b", "label": 0}\n')
    assert read_rows(p, "cls") == [("a", 1), ("b", 0)]
    p = _data(tmp_path, "d.csv", 'id,text,label\n1,"x, y",2\n2,"multi\nline",0\n')
    assert read_rows(p, "cls") == [("x, y", 2), ("multi\nline", 0)]
    assert read_rows(_data(tmp_path, "c.jsonl", '{"text": "only text"}\n'), "clm") == [("only text", 0)]


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "d.jsonl",
            '{"text": "a", "label": 0}\n{"text": "b", "label": "x"}\n',
            "key label on line 2: must be an integer ≥ 0, got 'x' (--task cls needs one per row)",
        ),
        ("d.jsonl", '{"text": "a"}\n', "key label on line 1: is required (--task cls needs one per row)"),
        (
            "d.jsonl",
            '{"text": "a", "label": -1}\n',
            "key label on line 1: must be an integer ≥ 0, got -1 (--task cls needs one per row)",
        ),
        ("d.jsonl", '{"label": 1}\n', "key text on line 1: is required"),
        ("d.jsonl", '{"text": 5, "label": 1}\n', "key text on line 1: must be a string, got 5"),
        ("d.jsonl", "[1, 2]\n", 'line 1: must be a JSON object with a "text" string, got [1, 2]'),
        (
            "d.jsonl",
            '{"text": "a", "label": 1}\n{oops\n',
            "line 2 is not a JSON object (malformed JSON at line 1 column 2: Expecting property name "
            "enclosed in double quotes)",
        ),
        (
            "d.jsonl",
            "\n\n",
            "the data file has no rows (hint: give a .jsonl file of "
            '{"text": ..., "label": 0} lines or a .csv file with text,label columns '
            "(docs/gid.md has a sample))",
        ),
        (
            "d.csv",
            "text,label\nfine,one\n",
            "key label on line 2: must be an integer ≥ 0, got 'one' (--task cls needs one per row)",
        ),
        (
            "d.csv",
            "text,label\nfine,\u00b2\n",  # a superscript two: isdigit() but not int()
            "key label on line 2: must be an integer ≥ 0, got '\u00b2' (--task cls needs one per row)",
        ),
        (
            "d.csv",
            'text,label\nfine,1\n"' + "a" * 200_000 + '",1\n',
            "not valid CSV (field larger than field limit (131072))",
        ),
        (
            "d.txt",
            "x",
            "the data file must be .jsonl or .csv (hint: give a .jsonl file of "
            '{"text": ..., "label": 0} lines or a .csv file with text,label columns '
            "(docs/gid.md has a sample))",
        ),
    ],
)
def test_read_rows_errors_name_the_file_and_line(tmp_path, name, text, message):
    p = _data(tmp_path, name, text)
    with pytest.raises(LorascopeError) as e:
        read_rows(p, "cls")
    hint = f" (hint: {e.value.hint})" if e.value.hint else ""
    assert f"{e.value}{hint}" == f"{p}: {message}"


def test_a_missing_data_file_says_what_to_give(tmp_path):
    with pytest.raises(InputNotFoundError) as e:
        read_rows(tmp_path / "d.jsonl", "cls")
    assert str(e.value) == f"{tmp_path / 'd.jsonl'}: calibration data file not found"
    assert "docs/gid.md has a sample" in e.value.hint


# --- the model folder ---------------------------------------------------------------------------


def test_check_model_dir(tmp_path):
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text('{"base_model_name_or_path": "org/base"}')
    with pytest.raises(InvalidArgumentError) as e:
        check_model_dir(ad)
    assert str(e.value) == (
        f"{ad} is not a model folder (it holds adapter_config.json: an adapter; "
        "give the base model it was trained on)"
    )
    assert e.value.hint == "its adapter_config.json names the base model org/base"
    for content, why in (
        ("{}", "its config.json has no model_type"),
        ("[", "its config.json has no model_type"),
    ):
        d = tmp_path / f"m{len(content)}"
        d.mkdir()
        (d / "config.json").write_text(content)
        with pytest.raises(
            InvalidArgumentError, match=f"^{re.escape(str(d))} is not a model folder \\({why}\\)$"
        ):
            check_model_dir(d)
    (tmp_path / "bare").mkdir()
    with pytest.raises(InvalidArgumentError, match=r"bare is not a model folder \(it has no config.json\)$"):
        check_model_dir(tmp_path / "bare")
    with pytest.raises(InputNotFoundError, match="model folder not found"):
        check_model_dir(tmp_path / "absent")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text('{"model_type": "bert"}')
    assert check_model_dir(tmp_path / "ok") == "bert"


# --- the docs -----------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "gid.md"


def _options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b", text))


def test_doc_synopsis_matches_help(capsys):
    with pytest.raises(SystemExit):
        main(["gid", "--help"])
    helped = _options(capsys.readouterr().out) - {"-h", "--help"}
    doc = DOC.read_text()
    synopsis = doc[doc.index("Synopsis") :]
    synopsis = synopsis[synopsis.index("```") + 3 :]
    synopsis = synopsis[: synopsis.index("```")]
    assert _options(synopsis) == helped


def test_doc_sample_data_files_are_valid(tmp_path):
    blocks = re.findall(r"```jsonl\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    cls_rows = read_rows(_data(tmp_path, "cls.jsonl", blocks[0]), "cls")
    assert len(cls_rows) >= 3 and {label for _, label in cls_rows} == {0, 1}
    assert len(read_rows(_data(tmp_path, "clm.jsonl", blocks[1]), "clm")) >= 2
    with pytest.raises(ConfigError, match="key label on line 1: is required"):
        read_rows(tmp_path / "clm.jsonl", "cls")


def test_peft_target_modules_in_natural_order():
    layers = [LayerGid(name=f"m.layers.{i}.q", shape=(8, 8), gid=4.0 + i, importance=1.0) for i in (10, 2, 1)]
    plan = peft_plan(layers, PlanOptions(rank=2))
    assert plan.peft.target_modules == ("m.layers.1.q", "m.layers.2.q", "m.layers.10.q")
