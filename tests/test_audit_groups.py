"""Module types and blocks: every supported architecture's names, and the summaries against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dense_sigma, peft_config, quantize, random_factors, write_peft

from lorascope.audit import AuditOptions, audit_adapter
from lorascope.audit.groups import block_energy, block_of, module_type

NAMES = {
    # Llama / Mistral / Qwen
    "model.layers.0.self_attn.q_proj": "attention",
    "model.layers.0.self_attn.k_proj": "attention",
    "model.layers.0.self_attn.v_proj": "attention",
    "model.layers.0.self_attn.o_proj": "attention",
    "model.layers.0.mlp.gate_proj": "mlp",
    "model.layers.0.mlp.up_proj": "mlp",
    "model.layers.0.mlp.down_proj": "mlp",
    "model.layers.0.self_attn.qkv_proj": "attention",  # Phi-3
    "model.layers.0.mlp.gate_up_proj": "mlp",
    # GPT-2 (Conv1D)
    "transformer.h.0.attn.c_attn": "attention",
    "transformer.h.0.attn.c_proj": "attention",
    "transformer.h.0.mlp.c_fc": "mlp",
    "transformer.h.0.mlp.c_proj": "mlp",
    # BERT / RoBERTa / MiniLM / ViT
    "bert.encoder.layer.0.attention.self.query": "attention",
    "bert.encoder.layer.0.attention.self.key": "attention",
    "bert.encoder.layer.0.attention.self.value": "attention",
    "bert.encoder.layer.0.attention.output.dense": "attention",
    "bert.encoder.layer.0.intermediate.dense": "mlp",
    "bert.encoder.layer.0.output.dense": "mlp",
    "bert.pooler.dense": "other",
    "vit.encoder.layer.3.attention.attention.query": "attention",
    # T5
    "encoder.block.0.layer.0.SelfAttention.q": "attention",
    "encoder.block.0.layer.0.SelfAttention.k": "attention",
    "encoder.block.0.layer.0.SelfAttention.v": "attention",
    "encoder.block.0.layer.0.SelfAttention.o": "attention",
    "decoder.block.1.layer.1.EncDecAttention.q": "attention",
    "encoder.block.0.layer.1.DenseReluDense.wi": "mlp",
    "encoder.block.0.layer.1.DenseReluDense.wo": "mlp",
    "decoder.block.0.layer.2.DenseReluDense.wi_0": "mlp",
    "decoder.block.0.layer.2.DenseReluDense.wi_1": "mlp",
    # Mixtral
    "model.layers.3.block_sparse_moe.experts.7.w1": "mlp",
    "model.layers.3.block_sparse_moe.experts.7.w2": "mlp",
    "model.layers.3.block_sparse_moe.experts.7.w3": "mlp",
    "model.layers.3.block_sparse_moe.gate": "mlp",
    "model.layers.3.self_attn.q_proj": "attention",
    # InternLM2 (attention.wo is attention even though T5's wo is MLP)
    "model.layers.0.attention.wqkv": "attention",
    "model.layers.0.attention.wo": "attention",
    "model.layers.0.feed_forward.w1": "mlp",
    # Falcon, DistilBERT, Phi-2, CLIP
    "transformer.h.0.self_attention.query_key_value": "attention",
    "transformer.h.0.self_attention.dense": "attention",
    "transformer.h.0.mlp.dense_h_to_4h": "mlp",
    "distilbert.transformer.layer.0.attention.q_lin": "attention",
    "distilbert.transformer.layer.0.ffn.lin1": "mlp",
    "model.layers.0.self_attn.dense": "attention",
    "model.layers.0.mlp.fc1": "mlp",
    "text_model.encoder.layers.0.self_attn.out_proj": "attention",
    # diffusers UNet / DiT
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": "attention",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k": "attention",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v": "attention",
    "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0": "attention",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj": "mlp",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2": "mlp",
    "unet.down_blocks.0.attentions.0.proj_in": "other",
    "unet.down_blocks.0.resnets.0.conv1": "other",
    "transformer.transformer_blocks.0.attn.add_q_proj": "attention",
    "transformer.single_transformer_blocks.0.proj_mlp": "mlp",
    # kohya / LyCORIS flat names
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "attention",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0": "attention",
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2": "mlp",
    "lora_unet_down_blocks_0_attentions_0_proj_in": "other",
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": "attention",
    "lora_te_text_model_encoder_layers_0_mlp_fc1": "mlp",
    "lm_head": "other",
}


@pytest.mark.parametrize("name", NAMES)
def test_module_type(name):
    assert module_type(name) == NAMES[name]


def test_block_of():
    assert block_of("model.layers.7.mlp.up_proj") == ("model.layers.7", 7)
    assert block_of("bert.encoder.layer.11.attention.self.query") == ("bert.encoder.layer.11", 11)
    # T5: the block, not the sub-layer; encoder and decoder blocks stay apart
    assert block_of("encoder.block.2.layer.1.DenseReluDense.wi") == ("encoder.block.2", 2)
    assert block_of("decoder.block.2.layer.1.DenseReluDense.wi") == ("decoder.block.2", 2)
    assert block_of("transformer.h.3.attn.c_attn") == ("transformer.h.3", 3)
    assert block_of("model.layers.1.block_sparse_moe.experts.5.w1") == ("model.layers.1", 1)
    assert block_of("lora_unet_down_blocks_1_attentions_0_proj_in") == ("lora_unet_down_blocks_1", 1)
    assert block_of("lm_head") is None


def test_block_energy_shares_and_hhi():
    names = ["m.layers.0.q", "m.layers.0.v", "m.layers.1.q", "lm_head"]
    out = block_energy(names, [1.0, 3.0, 4.0, 2.0], top=1)
    assert out["n_blocks"] == 2 and out["total_energy"] == 10.0
    assert [b["share"] for b in out["blocks"]] == [0.4, 0.4]
    assert out["unassigned_share"] == pytest.approx(0.2)
    assert out["hhi"] == pytest.approx(0.4**2 + 0.4**2 + 0.2**2)
    assert out["top"] == [{"block": "m.layers.0", "share": 0.4}]  # ties: by name
    dead = block_energy(["a.layers.0.q"], [0.0])
    assert dead["hhi"] == 0.0 and dead["blocks"][0]["share"] == 0.0


def test_audit_by_type_and_blocks_against_numpy(tmp_path, rng):
    mods = ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")
    names = [f"model.layers.{i}.{m}" for i in range(3) for m in mods] + ["lm_head"]
    layers = {n: random_factors(rng, 20, 12, 6, decay=0.3 + 0.1 * (i % 5)) for i, n in enumerate(names)}
    write_peft(tmp_path, layers, config=peft_config(r=6, lora_alpha=12))
    report = audit_adapter(tmp_path, AuditOptions(thresholds=(0.9, 0.99), top_blocks=2))
    s = report.summary
    sig = {n: dense_sigma(quantize(a, "fp32"), quantize(b, "fp32"), 2.0) for n, (a, b) in layers.items()}
    energy = {n: float(np.sum(v**2)) for n, v in sig.items()}

    def k_at(v, tau):
        c = np.cumsum(v**2) / np.sum(v**2)
        return int(np.searchsorted(c, tau * (1 - 1e-12)) + 1)

    for kind, sel in (("attention", "self_attn"), ("mlp", "mlp."), ("other", "lm_head")):
        group = [n for n in names if sel in n]
        e = s["by_type"][kind]
        assert e["n_layers"] == len(group) and e["params"] == len(group) * 6 * 32
        stable = [energy[n] / sig[n][0] ** 2 for n in group]
        assert e["stable_rank_mean"] == pytest.approx(np.mean(stable), rel=1e-9)
        assert e["utilisation_mean"] == pytest.approx(np.mean(stable) / 6, rel=1e-9)
        for tau in (0.9, 0.99):
            ks = [k_at(sig[n], tau) for n in group]
            assert e[f"energy_rank@{tau:g}"] == {"p50": np.percentile(ks, 50), "p90": np.percentile(ks, 90)}
    b = s["blocks"]
    total = sum(energy.values())
    want = {i: sum(energy[n] for n in names if n.startswith(f"model.layers.{i}.")) / total for i in range(3)}
    assert {x["index"]: x["share"] for x in b["blocks"]} == pytest.approx(want, rel=1e-9)
    assert b["unassigned_share"] == pytest.approx(energy["lm_head"] / total, rel=1e-9)
    assert b["hhi"] == pytest.approx(sum(v**2 for v in want.values()) + b["unassigned_share"] ** 2)
    assert len(b["top"]) == 2 and b["top"][0]["share"] == pytest.approx(max(want.values()))
    d = report.to_dict()
    assert {x["name"]: x["module_type"] for x in d["layers"]}["model.layers.1.mlp.up_proj"] == "mlp"
    assert {x["name"]: x["block"] for x in d["layers"]}["lm_head"] is None
