"""compress / plan_ranks: every rank mode against dense numpy, the truncation against a dense SVD,
the report's errors against dense norms, and the PEFT writer's files (no torch needed)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from conftest import PREFIX, peft_config, random_factors, write_peft

from lorascope.audit import AuditOptions, audit_adapter
from lorascope.cli.main import main
from lorascope.compress.compress import CompressOptions, compress_adapter, compress_file, round_to_dtype
from lorascope.compress.plan import RankMode, plan_ranks
from lorascope.errors import InvalidArgumentError
from lorascope.formats import load
from lorascope.rounding import Rounding
from lorascope.types import Adapter, LayerInfo, LoraDelta

# (name, out, in, r): different widths so the budget's per-rank costs differ
SHAPES = [("a.q", 24, 16, 8), ("a.v", 12, 16, 8), ("b.up", 40, 16, 6), ("b.down", 16, 40, 6)]


def make_adapter(rng, shapes=SHAPES, scale=2.0, dead=()) -> Adapter:
    deltas = []
    for i, (name, out, inn, r) in enumerate(shapes):
        a, b = random_factors(rng, out, inn, r, decay=0.5 + 0.1 * i)
        if name in dead:
            b = np.zeros_like(b)
        info = LayerInfo(name, "linear", r, out, inn, scale, "fp64")
        deltas.append(LoraDelta(info, a, b))
    return Adapter.from_deltas(deltas)


def dense_s(adapter: Adapter) -> dict[str, np.ndarray]:
    return {d.name: np.linalg.svd(d.dense(), compute_uv=False) for d in adapter.iter_deltas()}


def truncated(dense: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


@pytest.fixture
def adapter(rng):
    return make_adapter(rng)


@pytest.fixture
def report(adapter):
    return audit_adapter(adapter, AuditOptions(rounding=Rounding.parse("none")))


# --- planning -----------------------------------------------------------------------------------


def test_uniform_rank_never_increases(adapter, report):
    plan = plan_ranks(report, RankMode("rank", 7))
    assert plan == {"a.q": 7, "a.v": 7, "b.up": 6, "b.down": 6}


@pytest.mark.parametrize("tau", [0.5, 0.8, 0.9, 0.99, 1.0])
def test_energy_matches_dense(adapter, report, tau):
    plan = plan_ranks(report, RankMode("energy", tau))
    for name, s in dense_s(adapter).items():
        e = np.cumsum(s**2) / np.sum(s**2)
        want = next(i + 1 for i, v in enumerate(e) if v >= tau - 1e-12)
        assert plan[name] == min(want, adapter.info(name).rank)


def test_from_audit_uses_suggestions(adapter):
    rep = audit_adapter(adapter)
    assert set(plan_ranks(rep, RankMode("from_audit", "median")).values()) == {
        min(rep.suggestions["median"]["rank"], 6),
        min(rep.suggestions["median"]["rank"], 8),
    }
    per_layer = plan_ranks(rep, RankMode("from_audit", "per-layer"))
    assert per_layer == {x.name: x.suggested_rank for x in rep.layers}


def _kohya_reference(s: np.ndarray, method: str, x: float, rank: int) -> int:
    """kohya resize_lora.py rank_resize, written out with loops on the dense spectrum."""
    n = len(s)
    if s[0] <= 1e-6:
        return 1
    if method == "sv_ratio":
        idx = sum(1 for v in s if v > s[0] / x)
    else:
        vals = s**2 if method == "sv_fro" else s
        target = x**2 if method == "sv_fro" else x
        cum = np.cumsum(vals) / np.sum(vals)
        idx = next((i for i, v in enumerate(cum) if v >= target), n) + 1
    idx = max(1, min(idx, n - 1))
    return min(idx + 1, rank)


@pytest.mark.parametrize(
    ("method", "x"), [("sv_fro", 0.9), ("sv_fro", 0.5), ("sv_cumulative", 0.7), ("sv_ratio", 4.0)]
)
def test_kohya_modes_match_reference(adapter, report, method, x):
    plan = plan_ranks(report, RankMode(method, x))
    for name, s in dense_s(adapter).items():
        assert plan[name] == _kohya_reference(s, method, x, adapter.info(name).rank), name


def test_constraints_min_max_round(adapter, report):
    plan = plan_ranks(
        report, RankMode("energy", 0.5, min_rank=2, max_rank=5, rounding=Rounding.parse("multiple:4"))
    )
    for name, k in plan.items():
        assert 2 <= k <= min(5, adapter.info(name).rank)
    assert all(k in (2, 4, 5, 6) or k == adapter.info(n).rank for n, k in plan.items())
    plan = plan_ranks(report, RankMode("rank", 1, rounding=Rounding.parse("multiple:4")))
    assert plan == {"a.q": 4, "a.v": 4, "b.up": 4, "b.down": 4}


def test_dead_layer_gets_min_rank(rng):
    ad = make_adapter(rng, dead=("a.v",))
    plan = plan_ranks(audit_adapter(ad), RankMode("energy", 0.9, min_rank=2))
    assert plan["a.v"] == 2


def _brute_force(s2: dict[str, np.ndarray], costs: dict[str, int], ranks: dict[str, int], budget: float):
    names = list(s2)
    best = -1.0
    for ks in itertools.product(*[range(1, ranks[n] + 1) for n in names]):
        if sum(k * costs[n] for k, n in zip(ks, names, strict=True)) <= budget:
            best = max(best, sum(s2[n][:k].sum() for k, n in zip(ks, names, strict=True)))
    return best


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_budget_params_near_optimal_and_within_budget(adapter, report, ratio):
    plan = plan_ranks(report, RankMode("budget_ratio", ratio))
    costs = {n: adapter.info(n).in_features + adapter.info(n).out_features for n in adapter.names}
    ranks = {n: adapter.info(n).rank for n in adapter.names}
    budget = ratio * adapter.params
    assert sum(plan[n] * costs[n] for n in plan) <= budget
    s2 = {n: s[: ranks[n]] ** 2 for n, s in dense_s(adapter).items()}
    got = sum(s2[n][: plan[n]].sum() for n in plan)
    best = _brute_force(s2, costs, ranks, budget)
    max_step = max(s2[n][0] for n in s2)
    assert best - max_step <= got <= best + 1e-9


def test_budget_exact_when_costs_equal(rng):
    shapes = [(f"l{i}", 16, 16, 5) for i in range(4)]
    ad = make_adapter(rng, shapes)
    rep = audit_adapter(ad)
    for n_params in (4 * 32, 9 * 32, 13 * 32, 20 * 32):
        plan = plan_ranks(rep, RankMode("budget_params", n_params))
        s2 = {n: s[:5] ** 2 for n, s in dense_s(ad).items()}
        got = sum(s2[n][: plan[n]].sum() for n in plan)
        best = _brute_force(s2, dict.fromkeys(s2, 32), dict.fromkeys(s2, 5), n_params)
        assert got == pytest.approx(best, rel=1e-12)


def test_budget_bytes_uses_itemsize(adapter, report):
    by_params = plan_ranks(report, RankMode("budget_params", 500))
    by_bytes = plan_ranks(report, RankMode("budget_bytes", 500 * 2, dtype="fp16"))
    assert by_params == by_bytes


def test_budget_below_floor_is_an_error(report):
    with pytest.raises(InvalidArgumentError, match="below the minimum"):
        plan_ranks(report, RankMode("budget_params", 10))


@pytest.mark.parametrize(
    ("kind", "value"), [("energy", 1.5), ("rank", 0), ("sv_ratio", 0.5), ("from_audit", "p50"), ("bogus", 1)]
)
def test_bad_modes_rejected(kind, value):
    with pytest.raises(InvalidArgumentError):
        RankMode(kind, value)


# --- truncation and report ----------------------------------------------------------------------


@pytest.mark.parametrize("split", ["up", "sqrt"])
def test_compress_equals_truncated_dense_svd(adapter, split):
    plan = {"a.q": 3, "a.v": 8, "b.up": 2, "b.down": 1}
    small = compress_adapter(adapter, plan, split=split)
    for d in adapter.iter_deltas():
        new = small.delta(d.name)
        assert new.info.rank == plan[d.name] and new.info.scale == d.info.scale
        want = truncated(d.dense(), plan[d.name])
        assert np.linalg.norm(new.dense() - want) <= 1e-12 * np.linalg.norm(want)
    assert small.delta("a.v").down is adapter.delta("a.v").down  # unchanged layers keep their factors


def test_report_error_matches_dense(tmp_path, rng):
    layers = {f"m.{i}.q_proj": random_factors(rng, 20, 12, 8, decay=0.7) for i in range(3)}
    src = write_peft(tmp_path / "in", layers, config=peft_config(r=8, lora_alpha=16))
    rep = compress_file(src, tmp_path / "out", RankMode("rank", 3))
    out = load(tmp_path / "out")
    num, den = 0.0, 0.0
    for x in rep.layers:
        a, b = layers[x.name]
        dense = 2.0 * b @ a
        err = np.linalg.norm(dense - out.delta(x.name).dense())
        assert x.rel_error == pytest.approx(err / np.linalg.norm(dense), rel=1e-5)
        assert x.kept_energy == pytest.approx(1 - (err / np.linalg.norm(dense)) ** 2, rel=1e-6)
        num, den = num + err**2, den + np.linalg.norm(dense) ** 2
    s = rep.summary()
    assert s["rel_frobenius_error"] == pytest.approx(math.sqrt(num / den), rel=1e-5)
    assert s["new_params"] == 3 * 3 * (20 + 12) and s["params_reduction"] == pytest.approx(5 / 8)


# --- writing PEFT -------------------------------------------------------------------------------


def _header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def test_peft_output_patterns_keep_scale_and_dtype(tmp_path, rng):
    layers = {
        f"model.layers.{i}.self_attn.q_proj": random_factors(rng, 24, 16, 8, decay=0.5 + 0.1 * i)
        for i in range(4)
    }
    cfg = peft_config(r=8, lora_alpha=16, use_rslora=True)
    extra = {f"{PREFIX}score.weight": (rng.standard_normal((2, 16)), "bf16")}
    src = write_peft(
        tmp_path / "in", layers, dtype="bf16", config={**cfg, "modules_to_save": ["score"]}, extra=extra
    )
    compress_file(src, tmp_path / "out", RankMode("energy", 0.9))
    out_cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    header = _header(tmp_path / "out" / "adapter_model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert f"{PREFIX}score.weight" in header
    assert out_cfg["use_rslora"] is True and out_cfg["base_model_name_or_path"] == "tiny/test-model"
    assert not any(k.startswith(PREFIX) for k in out_cfg["rank_pattern"])
    orig, new = load(src), load(tmp_path / "out")
    assert len({layer.rank for layer in new.layers}) > 1  # per-layer ranks really differ
    for layer in new.layers:
        assert layer.scale == pytest.approx(orig.info(layer.name).scale, rel=1e-12)  # alpha = s·√k
        assert new.info(layer.name).dtype == "bf16"


def test_refuses_existing_output_and_input(tmp_path, small_adapter):
    src, _ = small_adapter
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        compress_file(src, tmp_path / "busy", RankMode("rank", 2))
    with pytest.raises(InvalidArgumentError, match="refusing"):
        compress_file(src, src, RankMode("rank", 2))
    assert (tmp_path / "busy" / "x").read_text() == "keep me"


def test_dry_run_writes_nothing(tmp_path, small_adapter):
    src, _ = small_adapter
    rep = compress_file(src, tmp_path / "out", RankMode("rank", 2), CompressOptions(dry_run=True))
    assert not (tmp_path / "out").exists() and rep.output is None
    assert set(rep.plan.values()) == {2}


def test_cli_json(tmp_path, small_adapter, capsys):
    src, _ = small_adapter
    code = main(["compress", str(src), "-o", str(tmp_path / "out"), "--budget-ratio", "0.5", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "lorascope.compress/v1"
    assert data["summary"]["new_params"] <= 0.5 * data["summary"]["params"]
    assert load(tmp_path / "out").params == data["summary"]["new_params"]


@pytest.mark.parametrize("rule", [None, "none", "pow2", "multiple:4", "multiple:3"])
def test_from_audit_keeps_the_rank_audit_suggests(tmp_path, rng, capsys, rule):
    """One rounding rule, one spelling: compress --from-audit p90 --rounding R == audit --rounding R."""
    layers = {
        f"model.layers.{i}.q_proj": random_factors(rng, 48, 40, 16, decay=0.75 + 0.02 * i) for i in range(6)
    }
    src = write_peft(tmp_path / "adapter", layers, config=peft_config(r=16, lora_alpha=16))
    flag = [] if rule is None else ["--rounding", rule]
    assert main(["audit", str(src), "--json", *flag]) == 0
    want = json.loads(capsys.readouterr().out)["suggestions"]["p90"]["rank"]
    assert main(["compress", str(src), "--from-audit", "p90", "--dry-run", "--json", *flag]) == 0
    got = {x["new_rank"] for x in json.loads(capsys.readouterr().out)["layers"]}
    assert got == {want}, (got, want)
    if rule == "pow2":
        assert want & (want - 1) == 0


def test_budget_steps_follow_the_rounding_rule(adapter, report):
    plan = plan_ranks(report, RankMode("budget_ratio", 0.6, rounding=Rounding.parse("pow2")))
    assert all(
        k & (k - 1) == 0 or k == info.rank for k, info in zip(plan.values(), adapter.layers, strict=True)
    )
    plan = plan_ranks(report, RankMode("budget_ratio", 0.6, rounding=Rounding.parse("multiple:3")))
    assert all(k % 3 == 0 or k == info.rank for k, info in zip(plan.values(), adapter.layers, strict=True))


def test_old_round_flag_still_accepted(tmp_path, small_adapter, capsys):
    src, _ = small_adapter
    assert (
        main(["compress", str(src), "--energy", "0.5", "--round", "multiple:4", "--dry-run", "--json"]) == 0
    )
    assert {x["new_rank"] % 4 for x in json.loads(capsys.readouterr().out)["layers"]} == {0}


def test_cli_error_is_one_line(tmp_path, small_adapter, capsys):
    src, _ = small_adapter
    assert main(["compress", str(src), "-o", str(tmp_path / "o"), "--energy", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lorascope: error: --energy must be in (0, 1], got 2.0"]


def test_kohya_output_keeps_scale_and_honest_metadata(tmp_path, adapter):
    from lorascope.formats import kohya

    kohya.write(adapter, tmp_path / "in.safetensors")
    src = load(tmp_path / "in.safetensors")
    ranks = {x.rank for x in adapter.layers}
    assert src.metadata["ss_network_dim"] == (str(ranks.pop()) if len(ranks) == 1 else "Dynamic")
    rep = compress_file(src, tmp_path / "out.safetensors", RankMode("energy", 0.9))
    out = load(tmp_path / "out.safetensors")
    assert out.format == "kohya"
    for d in src.iter_deltas():
        k = rep.plan[d.name]
        got = out.delta(d.name)
        assert got.info.rank == k
        assert np.linalg.norm(got.dense() - truncated(d.dense(), k)) <= 1e-6 * np.linalg.norm(d.dense())
    dims = {x.new_rank for x in rep.layers}
    assert out.metadata["ss_network_dim"] == (str(dims.pop()) if len(dims) == 1 else "Dynamic")


def test_diffusers_output_round_trips(tmp_path, adapter):
    from lorascope.formats import diffusers

    named = Adapter.from_deltas(
        [
            LoraDelta(replace(d.info, name=f"unet.blocks.{d.name}"), d.down, d.up)
            for d in adapter.iter_deltas()
        ]
    )
    diffusers.write(named, tmp_path / "in.safetensors")
    src = load(tmp_path / "in.safetensors")
    compress_file(src, tmp_path / "out.safetensors", RankMode("rank", 2))
    out = load(tmp_path / "out.safetensors")
    assert out.format == "diffusers"
    for d in src.iter_deltas():
        got = out.delta(d.name)
        assert got.info.rank == 2 and got.info.scale == pytest.approx(d.info.scale)
        assert np.linalg.norm(got.dense() - truncated(d.dense(), 2)) <= 1e-9 * np.linalg.norm(d.dense())


@pytest.mark.parametrize(
    "mode", [RankMode("rank", 2), RankMode("budget_ratio", 0.5)]
)  # one pass / audit pass
def test_non_finite_factor_is_a_format_error(tmp_path, rng, mode):
    from lorascope.errors import FormatError

    a, b = random_factors(rng, 12, 10, 4)
    a[1, 3] = np.nan
    src = write_peft(tmp_path / "in", {"m.q_proj": (a, b)})
    with pytest.raises(FormatError, match=r"layer m\.q_proj: tensor .*lora_A.* contains NaN or Inf"):
        compress_file(src, tmp_path / "out", mode)
    assert not (tmp_path / "out").exists()


def test_fp16_overflow_is_refused(rng):
    info = LayerInfo("big", "linear", 4, 8, 8, 1.0, "fp32")
    a, b = random_factors(rng, 8, 8, 4)
    ad = Adapter.from_deltas([LoraDelta(info, a * 1e3, b * 1e3)])
    with pytest.raises(InvalidArgumentError, match="overflow fp16; use --split sqrt"):
        compress_adapter(ad, {"big": 2}, dtype="fp16")
    small = compress_adapter(ad, {"big": 2}, dtype="fp16", split="sqrt")  # √S/√S keeps both factors in range
    assert np.isfinite(small.delta("big").up).all()


def test_cli_kohya_mode_dry_run_text(small_adapter, capsys):
    src, _ = small_adapter
    assert main(["compress", str(src), "--sv-fro", "0.9", "--dry-run", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing written" in out and "mode: sv_fro 0.9" in out
    assert out.count(" → ") >= 8 + 1  # one line per layer plus the header


def test_kohya_bf16_stays_bf16(tmp_path, rng):
    from lorascope.formats import kohya

    infos = [LayerInfo(f"lora_unet_l{i}", "linear", 6, 12, 10, 0.5, "bf16") for i in range(2)]
    deltas = [
        LoraDelta(i, *[round_to_dtype(x, "bf16") for x in random_factors(rng, 12, 10, 6)]) for i in infos
    ]
    kohya.write(Adapter.from_deltas(deltas), tmp_path / "in.safetensors")
    compress_file(tmp_path / "in.safetensors", tmp_path / "out.safetensors", RankMode("rank", 2))
    header = _header(tmp_path / "out.safetensors")
    assert {v["dtype"] for k, v in header.items() if k.endswith("weight")} == {"BF16"}


@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_lazy_compress_knows_each_layer_before_computing_it(adapter, dtype):
    from lorascope.compress.compress import compressed_lazy

    plan = {"a.q": 3, "b.up": 6, "b.down": 2}  # b.up keeps its rank
    lazy = compressed_lazy(adapter, plan, dtype=dtype)
    eager = compress_adapter(adapter, plan, dtype=dtype)
    assert lazy.layers == eager.layers
    for got, want in zip(lazy.iter_deltas(), eager.iter_deltas(), strict=True):
        assert got.info == want.info
        np.testing.assert_array_equal(got.down, want.down)
        np.testing.assert_array_equal(got.up, want.up)


@pytest.mark.parametrize("to", ["kohya", "diffusers", "lycoris"])
def test_compress_to_another_format_in_one_pass(tmp_path, small_adapter, to):
    """compress --to FORMAT = compress, then convert: the same ΔW′ per layer, written in FORMAT."""
    src, _ = small_adapter
    dest = tmp_path / f"out-{to}.safetensors"
    assert main(["compress", str(src), "-o", str(dest), "--rank", "3", "--to", to]) == 0
    small = compress_adapter(load(src), {name: 3 for name in load(src).names})
    out = load(dest, format=to)
    assert out.format == to and len(out.layers) == len(small.layers)
    want = sorted(np.linalg.norm(d.dense()) for d in small.iter_deltas())
    got = sorted(np.linalg.norm(d.dense()) for d in out.iter_deltas())
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert {x.rank for x in out.layers} == {3}


def test_compress_to_an_unknown_format_is_one_line(tmp_path, small_adapter, capsys):
    src, _ = small_adapter
    assert main(["compress", str(src), "-o", str(tmp_path / "o"), "--rank", "2", "--to", "onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnx" in err[0] and err[0].startswith("lorascope: error:")
