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
        elif hasattr(module, "lora_embedding_A") and len(module.lora_embedding_A):
            adapter = next(iter(module.lora_embedding_A))  # A (r, num_embeddings), B (dim, r)
            a = module.lora_embedding_A[adapter].detach().double()
            b = module.lora_embedding_B[adapter].detach().double()
        else:
            continue
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


# --- PEFT: full weights saved beside the LoRA ----------------------------------------------------

LLAMA = dict(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, num_labels=3, pad_token_id=0,
)  # fmt: skip


def _seq_cls(kind: str):
    """A tiny transformers sequence classifier and the LoRA targets of its attention."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llama":
        return transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**LLAMA)), [
            "q_proj",
            "v_proj",
        ]
    if kind == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=64, dim=16, hidden_dim=32, n_layers=2, n_heads=2)
        return transformers.DistilBertForSequenceClassification(cfg), ["q_lin", "v_lin"]
    cfg = transformers.RobertaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    return transformers.RobertaForSequenceClassification(cfg), ["query", "value"]


HEADS = {"llama": ["score"], "distilbert": ["classifier", "pre_classifier"], "roberta": ["classifier"]}


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("modules_to_save", ["as saved", "null"])
@pytest.mark.parametrize("serialization", ["safetensors", "bin"])
def test_sequence_classification_head(tmp_path, capsys, kind, modules_to_save, serialization):
    """PEFT saves a SEQ_CLS adapter's head even when its config says modules_to_save: null (older
    PEFT wrote null; PeftModelForSequenceClassification adds classifier/score at load time): the
    LoRA is audited, the head listed (both were refused as keys not understood)."""
    import json

    from peft import LoraConfig, TaskType, get_peft_model

    from lorascope.cli.main import main

    model, targets = _seq_cls(kind)
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    out = tmp_path / "adapter"
    peft_model.save_pretrained(str(out), safe_serialization=serialization == "safetensors")
    if modules_to_save == "null":
        config = json.loads((out / "adapter_config.json").read_text())
        config["modules_to_save"] = None
        (out / "adapter_config.json").write_text(json.dumps(config))
    a = load(out)
    assert list(a.modules_to_save) == HEADS[kind]
    truth = _truth(peft_model.base_model.model)
    assert set(a.names) == set(truth)
    for name in a.names:
        np.testing.assert_allclose(a.delta(name).dense(), truth[name], rtol=1e-6, atol=1e-9)
    assert main(["audit", str(out)]) == 0
    assert f"modules_to_save (not audited): {', '.join(HEADS[kind])}" in capsys.readouterr().out


def test_unknown_lora_like_tensor_is_still_an_error(tmp_path):
    """Known full weights are listed; a tensor no rule knows stays an error naming it."""
    import json

    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors.torch import load_file, save_file

    from lorascope.errors import FormatError

    model, targets = _seq_cls("roberta")
    get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=targets)
    ).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["task_type"] = "CAUSAL_LM"  # not a classification task: its head is not expected
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}))
    with pytest.raises(
        FormatError, match=r"4 key\(s\) not understood as PEFT LoRA tensors: .*classifier\.dense"
    ):
        load(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | {"task_type": "SEQ_CLS"}))
    weights = load_file(str(tmp_path / "adapter_model.safetensors"))
    weights["base_model.model.roberta.encoder.layer.0.attention.self.query.lora_C.weight"] = weights[
        "base_model.model.classifier.dense.weight"
    ].clone()
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(
        FormatError, match=r"1 key\(s\) not understood as PEFT LoRA tensors: .*query\.lora_C\.weight$"
    ):
        load(tmp_path)


@pytest.mark.parametrize(
    ("targets", "saved", "keys"),
    [
        (
            ["q_proj", "v_proj", "embed_tokens"],
            ["model.embed_tokens"],
            ["model.embed_tokens.base_layer.weight"],
        ),
        (
            ["q_proj", "v_proj"],
            ["lm_head", "model.embed_tokens"],
            ["lm_head.weight", "model.embed_tokens.weight"],
        ),
        (["q_proj", "v_proj", "lm_head"], ["lm_head"], ["lm_head.base_layer.weight"]),
    ],
)
def test_saved_embedding_layers(tmp_path, targets, saved, keys):
    """`save_pretrained(save_embedding_layers=True)` writes the embeddings' full weights beside the
    LoRA (a targeted layer's as `….base_layer.weight`): listed, not audited (were refused)."""
    import torch
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors import safe_open

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(str(tmp_path), save_embedding_layers=True)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert sorted(k for k in f.keys() if "lora_" not in k) == [f"base_model.model.{k}" for k in keys]
    a = load(tmp_path)
    assert list(a.modules_to_save) == saved
    truth = _truth(peft_model.base_model.model)
    assert set(a.names) == set(truth)
    for name in a.names:
        np.testing.assert_allclose(a.delta(name).dense(), truth[name], rtol=1e-6, atol=1e-9)


# --- --lora-only: the LoRA layers without the full weights beside them ---------------------------


def test_lora_only_convert_and_compress(tmp_path, capsys):
    """A classification adapter (head saved beside the LoRA): kohya cannot hold the head, and the
    refusal names --lora-only; with it the LoRA converts and compresses, and a note says what was
    left out.  PEFT output keeps the head unless --lora-only, and PEFT loads both."""
    import json

    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from safetensors import safe_open

    from lorascope.cli.main import main

    model, targets = _seq_cls("roberta")
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False
    )
    peft_model = get_peft_model(model, cfg)
    src = tmp_path / "src"
    peft_model.save_pretrained(str(src))
    capsys.readouterr()  # the libraries' warnings
    kohya = tmp_path / "k.safetensors"
    assert main(["convert", str(src), str(kohya), "--to", "kohya"]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {src}: modules_to_save (classifier) are full weights that kohya files "
        "cannot hold; pass --lora-only to write the LoRA layers without them\n"
    )
    assert main(["convert", str(src), str(kohya), "--to", "kohya", "--lora-only"]) == 0
    assert capsys.readouterr().out.startswith(
        "note: --lora-only: full weights not written: classifier; task_type SEQ_CLS dropped (PEFT loads that "
        "task only with its head)\nwrote 4 layers: "
    )
    assert len(load(kohya).names) == 4
    assert (
        main(["compress", str(src), "--rank", "2", "--to", "kohya", "-o", str(tmp_path / "c.safetensors")])
        == 2
    )
    assert "pass --lora-only" in capsys.readouterr().err
    argv = [
        "compress",
        str(src),
        "--rank",
        "2",
        "--to",
        "kohya",
        "-o",
        str(tmp_path / "c.safetensors"),
        "--lora-only",
    ]
    assert main(argv) == 0
    assert "--lora-only: full weights not written: classifier" in capsys.readouterr().out

    def head_keys(d):
        with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
            return sorted(k for k in f.keys() if "classifier" in k)

    for flag, want_head in (([], True), (["--lora-only"], False)):
        out = tmp_path / f"peft{len(flag)}"
        assert main(["compress", str(src), "--rank", "2", "-o", str(out), *flag]) == 0
        capsys.readouterr()
        assert bool(head_keys(out)) == want_head
        config = json.loads((out / "adapter_config.json").read_text())
        assert (config["modules_to_save"], config["task_type"]) == (
            (["classifier", "score"], "SEQ_CLS") if want_head else (None, None)
        )
        base, _ = _seq_cls("roberta")  # the same seed: the same base weights and head
        base.classifier.dense.weight.data += 1  # a head that differs from the trained one
        loaded = PeftModel.from_pretrained(base, str(out))
        head = loaded.base_model.model.classifier
        trained = peft_model.base_model.model.classifier.modules_to_save["default"]
        got = head.modules_to_save["default"] if want_head else head
        assert torch.equal(got.dense.weight, trained.dense.weight) == want_head
        assert sum(1 for n, _ in loaded.named_modules() if n.endswith("lora_A")) == 4


# --- round trips keep what the target format can hold ------------------------------------------


@pytest.mark.parametrize("via", ["kohya", "lycoris"])
def test_peft_config_survives_a_flat_format(tmp_path, capsys, via):
    """PEFT → kohya / LyCORIS → PEFT lost task_type, base model, lora_dropout and bias, so PEFT then
    loaded a plain PeftModel; the flat file carries them (lorascope_peft_config, ss_sd_model_name)
    next to ss_network_dim / ss_network_alpha."""
    import json

    import torch
    import transformers
    from peft import LoraConfig, PeftModel, PeftModelForCausalLM, TaskType, get_peft_model
    from safetensors import safe_open

    from lorascope.convert import convert_file

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    cfg = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.1, bias="none",
        init_lora_weights=False, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2},
    )  # fmt: skip
    peft_model = get_peft_model(model, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = "tiny/llama"
    src = tmp_path / "src"
    peft_model.save_pretrained(str(src))
    flat = tmp_path / f"{via}.safetensors"
    convert_file(src, flat, to=via)
    with safe_open(str(flat), "np") as f:
        meta = f.metadata()
    assert meta["ss_sd_model_name"] == "tiny/llama"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("Dynamic", "8")
    carried = json.loads(meta["lorascope_peft_config"])
    assert (
        carried["task_type"] == "CAUSAL_LM" and carried["lora_dropout"] == 0.1 and carried["bias"] == "none"
    )
    back = tmp_path / "back"
    convert_file(flat, back, to="peft")
    config = json.loads((back / "adapter_config.json").read_text())
    original = json.loads((src / "adapter_config.json").read_text())
    for key in (
        "task_type",
        "base_model_name_or_path",
        "lora_dropout",
        "bias",
        "fan_in_fan_out",
        "use_rslora",
    ):
        assert config[key] == original[key], key
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    loaded = PeftModel.from_pretrained(base, str(back))
    assert isinstance(loaded, PeftModelForCausalLM)
    truth = _truth(peft_model.base_model.model)
    a, live = load(back), _truth(loaded.base_model.model)
    for name in a.names:
        np.testing.assert_allclose(a.delta(name).dense(), truth[name], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(live[name], truth[name], rtol=1e-6, atol=1e-9)


def test_locon_to_kohya_names(tmp_path):
    """A LoCon file from LyCORIS's wrapper names modules lycoris_<path>; kohya spells them
    lora_unet_<path> (was lora_unet_lycoris_<path>)."""
    from test_formats_lycoris import _build

    from lorascope.convert import convert_file

    path, truth = _build(tmp_path, "locon", {}, 4, seed=0)
    assert set(load(path).names) == {"lycoris_fc1", "lycoris_conv"}
    convert_file(path, tmp_path / "k.safetensors", to="kohya")
    k = load(tmp_path / "k.safetensors")
    assert k.format == "kohya" and set(k.names) == {"lora_unet_fc1", "lora_unet_conv"}
    for name in ("fc1", "conv"):
        np.testing.assert_allclose(
            k.delta(f"lora_unet_{name}").dense(), truth[f"lycoris_{name}"], rtol=1e-6, atol=1e-9
        )
