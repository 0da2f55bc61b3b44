"""diffusers LoRA files written by the real `diffusers` package, plus the older key namings."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_safetensors_raw

from lorascope.audit import audit_adapter
from lorascope.errors import FormatError
from lorascope.formats import detect, load

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=12,
    attention_head_dim=2,
    norm_num_groups=4,
)


def _peft_truth(model, component):
    """{component.module: scale·B@A (flattened, float64)} read from the live PEFT layers."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().double()
            b = module.lora_B["default"].weight.detach().double()
            out[f"{component}.{name}"] = (
                module.scaling["default"] * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)).numpy()
            )
    return out


def save_diffusers_lora(tmp_path, seed=0):
    """A tiny SD-style UNet + CLIP text encoder with PEFT LoRA, saved by diffusers' save_lora_weights."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**UNET_CONFIG)
    unet_cfg = LoraConfig(
        r=4, lora_alpha=6, target_modules=["to_q", "to_k", "conv1", "proj_in"], rank_pattern={"proj_in": 2},
        alpha_pattern={"to_k": 1}, init_lora_weights=False,
    )  # fmt: skip
    unet.add_adapter(unet_cfg)
    te = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=50,
            bos_token_id=0,
            eos_token_id=1,
        )
    )
    te_cfg = LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "fc1"], init_lora_weights=False)
    te.add_adapter(te_cfg)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(te)),
        unet_lora_adapter_metadata=unet_cfg.to_dict(),
        text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
    )
    return tmp_path / "pytorch_lora_weights.safetensors", {
        **_peft_truth(unet, "unet"),
        **_peft_truth(te, "text_encoder"),
    }


@pytest.mark.torch
def test_real_diffusers_file_matches_dense_svd(tmp_path):
    path, truth = save_diffusers_lora(tmp_path)
    assert detect(path) == "diffusers" and detect(tmp_path) == "diffusers"
    report = audit_adapter(tmp_path)
    assert {x.name for x in report.layers} == set(truth)
    for layer in report.layers:
        dense = np.linalg.svd(truth[layer.name], compute_uv=False)[: layer.info.rank]
        np.testing.assert_allclose(layer.sigma, dense, rtol=1e-6, atol=1e-12 * dense[0])
    by = {x.name: x.info for x in report.layers}
    assert by["unet.down_blocks.0.attentions.0.proj_in"].rank == 2  # rank_pattern
    assert (
        by["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"].scale == 0.25
    )  # alpha_pattern
    te_q = next(info for name, info in by.items() if name.endswith("layers.0.self_attn.q_proj"))
    assert te_q.scale == 2.5 and te_q.name.startswith("text_encoder.")
    assert by["unet.down_blocks.0.resnets.0.conv1"].kind == "conv"


OLD_PROC = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
OLD_TE = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"


def _old_style(rng):
    p = OLD_PROC
    t = {
        f"{p}.to_q_lora.down.weight": (rng.standard_normal((2, 8)), "fp64"),
        f"{p}.to_q_lora.up.weight": (rng.standard_normal((8, 2)), "fp64"),
        f"{p}.to_out_lora.down.weight": (rng.standard_normal((2, 8)), "fp64"),
        f"{p}.to_out_lora.up.weight": (rng.standard_normal((8, 2)), "fp64"),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": (
            rng.standard_normal((2, 6)), "fp64"),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": (
            rng.standard_normal((6, 2)), "fp64"),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.alpha": (np.array(1.0), "fp32"),
    }  # fmt: skip
    return t


def test_old_namings_and_network_alphas(tmp_path, rng):
    t = _old_style(rng)
    path = tmp_path / "old.safetensors"
    write_safetensors_raw(path, t)
    a = load(path)
    assert a.format == "diffusers"
    names = set(a.names)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in names
    te = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert a.info(te).scale == 0.5  # alpha 1 / r 2
    key = f"{te}.lora_linear_layer."
    dense = 0.5 * t[key + "up.weight"][0] @ t[key + "down.weight"][0]
    np.testing.assert_allclose(a.delta(te).dense(), dense, rtol=1e-14)
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert a.info(q).scale == 1.0  # no alpha, no metadata: diffusers loads lora_alpha = r


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.pop(f"{OLD_PROC}.to_q_lora.up.weight"),
         r"layer unet\.down_blocks.*attn1\.to_q: missing lora_B/up tensor\(s\) "
         r"beside .*to_q_lora\.down\.weight"),
        (lambda t: t.__setitem__(f"{OLD_TE}.alpha", (np.ones(2), "fp32")),
         r"q_proj\.alpha must be a single number \(alpha\), got shape \[2\]"),
        (lambda t: t.__setitem__("unet.conv_in.weight", (np.ones((2, 2)), "fp32")),
         r"1 key\(s\) not understood as diffusers LoRA tensors: unet\.conv_in\.weight$"),
    ],
)  # fmt: skip
def test_malformed_diffusers(tmp_path, rng, mutate, message):
    t = _old_style(rng)
    mutate(t)
    path = tmp_path / "bad.safetensors"
    write_safetensors_raw(path, t)
    with pytest.raises(FormatError, match=message) as err:
        load(path, format="diffusers")
    assert "\n" not in str(err.value)


def test_bad_adapter_metadata_json(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    write_safetensors_raw(path, _old_style(rng), metadata={"lora_adapter_metadata": "{nope"})
    with pytest.raises(FormatError, match="lora_adapter_metadata is not valid JSON"):
        load(path)


@pytest.mark.torch
def test_kohya_written_by_convert_is_read_by_diffusers(tmp_path):
    """diffusers' own kohya → diffusers converter accepts our sd-scripts names and alphas."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from lorascope.convert import convert_file

    path, truth = save_diffusers_lora(tmp_path)
    convert_file(path, tmp_path / "k.safetensors", to="kohya")
    sd, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(tmp_path / "k.safetensors"))
    norms = []
    for key, down in sd.items():
        if ".down.weight" not in key:
            continue
        up = sd[key.replace(".down.weight", ".up.weight")].double()
        down = down.double()
        alpha = alphas.get(f"{key}.alpha", alphas.get(key.replace(".lora.down.weight", ".alpha")))
        scale = alpha / down.shape[0]
        norms.append(float(scale * (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).norm()))
    expected = sorted(float(np.linalg.norm(x)) for x in truth.values())
    np.testing.assert_allclose(sorted(norms), expected, rtol=1e-12)
