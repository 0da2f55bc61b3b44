"""kohya / sd-scripts files (named the way networks/lora.py names them): spectra vs dense SVD."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import quantize, strict_json, write_safetensors_raw

from lorascope.audit import audit_adapter
from lorascope.cli.main import main
from lorascope.errors import FormatError, UnknownFormatError
from lorascope.formats import detect, load

UNET_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
UNET_CONV = "lora_unet_down_blocks_0_resnets_0_conv1"
UNET_TUCKER = "lora_unet_up_blocks_1_resnets_2_conv2"
TE1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
TE2 = "lora_te2_text_model_encoder_layers_0_mlp_fc1"
SS_META = {
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_network_module": "networks.lora",
}


def _sdxl_like(rng, dtype="fp16"):
    """{key: (array, dtype)} plus the dense ΔW (float64, flattened) of every module."""
    r = 4
    t: dict = {}
    truth: dict = {}

    def put(name, down, up, alpha=None, mid=None):
        t[f"{name}.lora_down.weight"] = (down, dtype)
        t[f"{name}.lora_up.weight"] = (up, dtype)
        if mid is not None:
            t[f"{name}.lora_mid.weight"] = (mid, dtype)
        if alpha is not None:
            t[f"{name}.alpha"] = (np.array(alpha, dtype=np.float32), "fp16")
        d, u = quantize(down, dtype), quantize(up, dtype).reshape(up.shape[0], -1)  # (r, …), (out, r)
        if mid is not None:
            d = np.einsum("ijhw,jc->ichw", quantize(mid, dtype), d.reshape(r, -1))
        scale = (alpha if alpha is not None else r) / r
        truth[name] = scale * u @ d.reshape(r, -1)

    put(UNET_Q, rng.standard_normal((r, 40)), rng.standard_normal((40, r)), alpha=2.0)
    put(UNET_CONV, rng.standard_normal((r, 6, 3, 3)), rng.standard_normal((8, r, 1, 1)), alpha=1.0)
    put(
        UNET_TUCKER,
        rng.standard_normal((r, 6, 1, 1)),
        rng.standard_normal((8, r, 1, 1)),
        alpha=8.0,
        mid=rng.standard_normal((r, r, 3, 3)),
    )
    put(TE1, rng.standard_normal((r, 32)), rng.standard_normal((32, r)))  # no alpha: scale 1
    put(TE2, rng.standard_normal((r, 24)), rng.standard_normal((48, r)), alpha=0.5)
    return t, truth


@pytest.fixture
def kohya_file(tmp_path, rng):
    t, truth = _sdxl_like(rng)
    path = tmp_path / "sdxl_lora.safetensors"
    write_safetensors_raw(path, t, metadata=SS_META)
    return path, truth


def test_kohya_spectra_alpha_conv_tucker_match_dense(kohya_file):
    path, truth = kohya_file
    assert detect(path) == "kohya"
    report = audit_adapter(path)
    # the audit lists layers in natural order (te1 before unet), not the file's order
    assert [x.name for x in report.layers] == sorted(truth)
    for layer in report.layers:
        dense = np.linalg.svd(truth[layer.name], compute_uv=False)[: layer.info.rank]
        np.testing.assert_allclose(layer.sigma, dense, rtol=1e-6, atol=1e-12 * dense[0])
    by = {x.name: x.info for x in report.layers}
    assert (by[UNET_Q].scale, by[TE1].scale, by[UNET_TUCKER].scale) == (0.5, 1.0, 2.0)
    assert by[UNET_CONV].kind == "conv" and by[UNET_CONV].weight_shape == (8, 6, 3, 3)
    assert by[UNET_TUCKER].in_features == 6 * 9 and by[UNET_CONV].dtype == "fp16"


def test_ss_metadata_shown_in_json(kohya_file, capsys):
    path, _ = kohya_file
    assert main(["audit", str(path), "--json", "-q"]) == 0
    source = strict_json(capsys.readouterr().out)["source"]
    assert source["format"] == "kohya"
    assert source["r"] == 4 and source["lora_alpha"] == 2.0
    assert source["base_model_name_or_path"] == "sd_xl_base_1.0.safetensors"
    assert source["metadata"]["ss_network_module"] == "networks.lora"


def _write(tmp_path, rng, mutate):
    t, _ = _sdxl_like(rng, "fp32")
    mutate(t)
    path = tmp_path / "bad.safetensors"
    write_safetensors_raw(path, t)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t.pop(f"{UNET_Q}.lora_up.weight"),
            rf"layer {UNET_Q}: missing lora_up.weight tensor\(s\) beside {UNET_Q}.alpha",
        ),
        (
            lambda t: t.pop(f"{TE2}.lora_down.weight"),
            rf"layer {TE2}: missing lora_down.weight tensor\(s\) beside {TE2}.alpha",
        ),
        (
            lambda t: t.__setitem__(f"{UNET_Q}.alpha", (np.ones((2, 2)), "fp32")),
            rf"{UNET_Q}.alpha must be a single number \(alpha\), got shape \[2, 2\]",
        ),
        (
            lambda t: t.__setitem__("lora_unet_x.hada_q", (np.ones(2), "fp32")),
            r"1 key\(s\) not understood as kohya",
        ),
        (
            lambda t: t.__setitem__(f"{TE1}.lora_up.weight", (np.ones((32, 3)), "fp32")),
            rf"layer {TE1}: rank mismatch",
        ),
        (
            lambda t: t.__setitem__(f"{UNET_TUCKER}.lora_mid.weight", (np.ones((4, 5, 3, 3)), "fp32")),
            rf"layer {UNET_TUCKER}: lora_mid \[4, 5, 3, 3\] does not fit lora_down",
        ),
    ],
)
def test_malformed_kohya_one_line_errors(tmp_path, rng, mutate, message):
    path = _write(tmp_path, rng, mutate)
    with pytest.raises(FormatError, match=message) as err:
        load(path, format="kohya")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_unknown_key_names_the_key_and_cli_exits_nonzero(tmp_path, rng, capsys):
    path = _write(tmp_path, rng, lambda t: t.__setitem__(f"{TE1}.lora_magnitude", (np.ones(3), "fp32")))
    assert main(["audit", str(path), "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") <= 1 and f"{TE1}.lora_magnitude" in err


def test_detection_unknown_and_lycoris_not_claimed(tmp_path, rng):
    junk = tmp_path / "junk.safetensors"
    write_safetensors_raw(junk, {"model.w": (np.ones((2, 2)), "fp32")})
    with pytest.raises(UnknownFormatError, match="unknown adapter format"):
        detect(junk)
    t, _ = _sdxl_like(rng, "fp32")
    t["lora_unet_y.hada_w1_a"] = (np.ones((2, 2)), "fp32")
    mixed = tmp_path / "mixed.safetensors"
    write_safetensors_raw(mixed, t)
    assert detect(mixed) == "lycoris"


def test_dora_scale_flagged(tmp_path, rng):
    path = _write(tmp_path, rng, lambda t: t.__setitem__(f"{UNET_Q}.dora_scale", (np.ones((40, 1)), "fp32")))
    a = load(path)
    assert a.info(UNET_Q).dora and any("DoRA" in n for n in a.notes)
    bad = _write(tmp_path, rng, lambda t: t.__setitem__(f"{UNET_Q}.dora_scale", (np.ones((7, 1)), "fp32")))
    with pytest.raises(FormatError, match=rf"layer {UNET_Q}: dora_scale has 7 entries"):
        load(bad)


def test_name_map_metadata_must_be_json(tmp_path, rng):
    t, _ = _sdxl_like(rng, "fp32")
    path = tmp_path / "m.safetensors"
    write_safetensors_raw(path, t, metadata={"lorascope_module_names": "{not json"})
    with pytest.raises(FormatError, match="lorascope_module_names is not valid JSON"):
        load(path)
    write_safetensors_raw(path, t, metadata={"lorascope_module_names": json.dumps({UNET_Q: "unet.a.b"})})
    assert load(path).info(UNET_Q).extras["dotted_name"] == "unet.a.b"


def test_zero_alpha_means_rank_as_in_sd_scripts(tmp_path, rng):
    path = _write(tmp_path, rng, lambda t: t.__setitem__(f"{UNET_Q}.alpha", (np.array(0.0), "fp32")))
    assert load(path).info(UNET_Q).scale == 1.0


def test_rewritten_kohya_metadata(kohya_file, tmp_path):
    """ss_* facts carried, ss_network_dim/alpha recomputed, stale tensor hashes dropped."""
    from lorascope.compress import RankMode, compress_file
    from lorascope.formats import kohya

    path, _ = kohya_file
    src = load(path)
    stale = replace(src, metadata={**src.metadata, "sshs_model_hash": "abc", "sshs_legacy_hash": "def"})
    compress_file(stale, tmp_path / "c.safetensors", RankMode("rank", 2))
    meta = load(tmp_path / "c.safetensors").metadata
    assert meta["ss_sd_model_name"] == SS_META["ss_sd_model_name"]
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("2", "Dynamic")
    assert not any(k.startswith("sshs_") for k in meta)
    kohya.write(replace(src, metadata={}), tmp_path / "k.safetensors", source=stale)
    back = load(tmp_path / "k.safetensors")
    assert back.metadata["ss_network_dim"] == "4"
    for d in src.iter_deltas():  # the Tucker layer's folded down factor is written as exact float64
        np.testing.assert_allclose(back.delta(d.name).dense(), d.dense(), rtol=1e-14, atol=0, err_msg=d.name)
