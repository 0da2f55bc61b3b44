"""Base-model weights: exact ‖W‖₂ (LAPACK and Lanczos), opening model folders, name mapping."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_safetensors_raw

from lorascope.audit import base as base_mod
from lorascope.audit.base import open_base, resolve
from lorascope.audit.norms import lanczos_sigma_max, spectral_norm

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


def test_open_base_rejects_duplicate_keys(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    for f in ("a.safetensors", "b.safetensors"):
        write_safetensors_raw(d / f, {"x.weight": (np.ones((2, 2)), "fp32")})
    with pytest.raises(base_mod.FormatError, match="is in two shards"):
        open_base(d)
