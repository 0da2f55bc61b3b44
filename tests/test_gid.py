"""`lorascope gid` without torch: GID metrics against numpy SVD, plan arithmetic on hand-computed
cases, the RaLoRA format read as an exact LoRA (spectrum = union of the blocks' spectra), the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from lorascope.cli.main import main
from lorascope.errors import FormatError, InvalidArgumentError, UnsupportedError
from lorascope.formats import detect, load, save
from lorascope.formats.ralora import block_diagonal, diagonal_blocks
from lorascope.gid import (
    GidReport,
    LayerGid,
    PlanOptions,
    blocks_for,
    energy_erank,
    gid_metrics,
    gradient_singular_values,
    make_plan,
    peft_plan,
    pro_ranks,
    ralora_plan,
    ralora_pro_plan,
    read_plan,
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
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    rep = _report(tmp_path)
    argv = [rep if a == "R" else a for a in argv]
    assert main(["gid", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"lorascope: error: {message.replace('R:', rep + ':')}\n"
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
