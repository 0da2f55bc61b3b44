"""Adapters as the real libraries write them, read back against the libraries' own ΔW.

* diffusers: one model's file (`save_lora_adapter`: PEFT naming without a pipeline component, its
  LoraConfig in `lora_adapter_metadata`), and the older attention-processor naming
  (`…attn1.processor.to_q_lora.down.weight`) that diffusers still loads.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_safetensors_raw

from lorascope.audit import audit_adapter
from lorascope.formats import detect, load

pytestmark = pytest.mark.torch

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


def _unet(seed=0):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**UNET_CONFIG)


def _truth(model, prefix=""):
    """{module: scale·B@A (flattened, float64)} from the live PEFT layers of `model`."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and len(module.lora_A):
            adapter = next(iter(module.lora_A))
            a = module.lora_A[adapter].weight.detach().double()
            b = module.lora_B[adapter].weight.detach().double()
            dense = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
            out[prefix + name] = module.scaling[adapter] * dense.numpy()
    return out


def _check_against(path, truth):
    a = load(path)
    assert a.format == "diffusers" and set(a.names) == set(truth)
    for name in a.names:
        np.testing.assert_allclose(a.delta(name).dense(), truth[name], rtol=1e-6, atol=1e-9)
    return a


def test_model_level_save_lora_adapter(tmp_path):
    """`UNet2DConditionModel.save_lora_adapter`: keys without a component, r / lora_alpha /
    rank_pattern / alpha_pattern in the metadata (was "unknown adapter format")."""
    from peft import LoraConfig

    unet = _unet()
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_out.0", "conv1"], rank_pattern={"to_q": 2},
        alpha_pattern={"to_k": 3}, init_lora_weights=False,
    )  # fmt: skip
    unet.add_adapter(cfg)
    unet.save_lora_adapter(str(tmp_path))
    path = tmp_path / "pytorch_lora_weights.safetensors"
    assert detect(path) == "diffusers" and detect(tmp_path) == "diffusers"
    a = _check_against(path, _truth(unet))
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert a.info(q).rank == 2 and a.info(q).scale == 4.0
    assert a.info(q.replace("to_q", "to_k")).scale == 0.75
    report = audit_adapter(path)
    assert len(report.layers) == len(a.names)


def _old_processor_tensors(unet, rng, prefix=""):
    """What `save_attn_procs` wrote before diffusers moved to PEFT: one module per attention
    projection, `<attn>.processor.to_q_lora.down.weight` … `to_out_lora.up.weight`."""
    t = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                lin = module.to_out[0] if proj == "to_out" else getattr(module, proj)
                key = f"{prefix}{name}.processor.{proj}_lora"
                t[f"{key}.down.weight"] = (rng.standard_normal((2, lin.in_features)), "fp32")
                t[f"{key}.up.weight"] = (rng.standard_normal((lin.out_features, 2)), "fp32")
    return t


@pytest.mark.parametrize("prefix", ["", "unet."])
def test_old_attention_processor_files(tmp_path, rng, prefix):
    """Without the `unet.` prefix (as `save_attn_procs` wrote them) these were "unknown adapter
    format", and `--format diffusers` rejected every key; diffusers still loads both."""
    from diffusers import StableDiffusionPipeline

    unet = _unet()
    path = tmp_path / "pytorch_lora_weights.safetensors"
    write_safetensors_raw(path, _old_processor_tensors(unet, rng, prefix))
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(tmp_path))
    if prefix:
        StableDiffusionPipeline.load_lora_into_unet(state, alphas, unet)
    else:
        unet.load_lora_adapter(state, prefix=None, network_alphas=alphas)
    truth = _truth(unet, prefix)
    assert len(truth) == 32  # 8 attention modules (attn1, attn2 of 4 blocks) × q, k, v, out
    a = _check_against(path, truth)
    assert f"{prefix}down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0" in a.names
    assert all(info.scale == 1.0 for info in a.layers)  # no alphas stored: diffusers loads alpha = r


def test_old_text_encoder_processor_names(tmp_path, rng):
    """A text encoder's old attention keys name CLIP's q_proj … out_proj as to_q_lora … to_out_lora."""
    base = "text_encoder.text_model.encoder.layers.0.self_attn"
    t = {}
    for proj in ("to_q", "to_out"):
        t[f"{base}.{proj}_lora.down.weight"] = (rng.standard_normal((2, 6)), "fp32")
        t[f"{base}.{proj}_lora.up.weight"] = (rng.standard_normal((6, 2)), "fp32")
    path = tmp_path / "te.safetensors"
    write_safetensors_raw(path, t)
    assert set(load(path).names) == {f"{base}.q_proj", f"{base}.out_proj"}
