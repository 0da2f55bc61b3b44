"""`convert`: round trips between PEFT, kohya and diffusers keep every layer's ΔW."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import peft_config, strict_json, write_peft, write_safetensors_raw

from lorascope.cli.main import main
from lorascope.convert import convert_file
from lorascope.errors import InvalidArgumentError, UnsupportedError
from lorascope.formats import detect, load

UNET = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.attentions.0.proj_in",
        "mid_block.attentions.0.transformer_blocks.0.ff.net.2"]  # fmt: skip
CONV = "down_blocks.0.resnets.0.conv1"


def _peft_source(tmp_path, rng, *, rslora=False):
    """A PEFT adapter with rank/alpha patterns, a conv layer and fp16 factors."""
    layers = {m: (rng.standard_normal((4, 24)), rng.standard_normal((16, 4))) for m in UNET}
    layers[UNET[1]] = (rng.standard_normal((2, 24)), rng.standard_normal((16, 2)))
    layers[CONV] = (rng.standard_normal((4, 6, 3, 3)), rng.standard_normal((8, 4, 1, 1)))
    cfg = peft_config(r=4, lora_alpha=6, rank_pattern={"proj_in": 2}, alpha_pattern={"ff.net.2": 3},
                      use_rslora=rslora, target_modules=["to_q", "proj_in", "net.2", "conv1"])  # fmt: skip
    return write_peft(tmp_path / "src", layers, dtype="fp16", config=cfg)


def _dense(adapter) -> dict[str, np.ndarray]:
    return {x.name: x.dense() for x in adapter.iter_deltas()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-14, atol=0, err_msg=name)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_kohya_peft_round_trip(tmp_path, rng, rslora):
    src = _peft_source(tmp_path, rng, rslora=rslora)
    convert_file(src, tmp_path / "k.safetensors", to="kohya")
    assert detect(tmp_path / "k.safetensors") == "kohya"
    k = load(tmp_path / "k.safetensors")
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in k.names
    assert {n.replace("lora_unet_", "") for n in k.names} == {m.replace(".", "_") for m in [*UNET, CONV]}
    convert_file(tmp_path / "k.safetensors", tmp_path / "back", to="peft")
    _same(_dense(load(src)), _dense(load(tmp_path / "back")))
    kd = {n.removeprefix("lora_unet_"): d for n, d in _dense(k).items()}
    _same({m.replace(".", "_"): d for m, d in _dense(load(src)).items()}, kd)


def test_peft_diffusers_peft_round_trip(tmp_path, rng):
    src = _peft_source(tmp_path, rng)
    convert_file(src, tmp_path / "d.safetensors", to="diffusers")
    d = load(tmp_path / "d.safetensors")
    assert d.format == "diffusers" and all(n.startswith("unet.") for n in d.names)
    assert d.info(f"unet.{CONV}").kind == "conv"
    convert_file(tmp_path / "d.safetensors", tmp_path / "back", to="peft")
    _same(_dense(load(src)), _dense(load(tmp_path / "back")))
    _same({f"unet.{m}": x for m, x in _dense(load(src)).items()}, _dense(d))


def test_kohya_tucker_to_diffusers_via_lorascope_names(tmp_path, rng):
    t = {
        "lora_unet_a_conv.lora_down.weight": (rng.standard_normal((2, 3, 1, 1)), "fp32"),
        "lora_unet_a_conv.lora_mid.weight": (rng.standard_normal((2, 2, 3, 3)), "fp32"),
        "lora_unet_a_conv.lora_up.weight": (rng.standard_normal((5, 2, 1, 1)), "fp32"),
        "lora_unet_a_conv.alpha": (np.array(3.0), "fp32"),
        "lora_te_b.lora_down.weight": (rng.standard_normal((2, 7)), "fp16"),
        "lora_te_b.lora_up.weight": (rng.standard_normal((4, 2)), "fp16"),
    }
    plain = tmp_path / "plain.safetensors"
    write_safetensors_raw(plain, t)
    with pytest.raises(UnsupportedError, match="kohya names are flattened"):
        convert_file(plain, tmp_path / "x.safetensors", to="diffusers")
    names = '{"lora_unet_a_conv": "unet.a.conv", "lora_te_b": "text_encoder.b"}'
    write_safetensors_raw(plain, t, metadata={"lorascope_module_names": names})
    convert_file(plain, tmp_path / "d.safetensors", to="diffusers")
    d = _dense(load(tmp_path / "d.safetensors"))
    src = _dense(load(plain))
    _same({"unet.a.conv": src["lora_unet_a_conv"], "text_encoder.b": src["lora_te_b"]}, d)
    with pytest.raises(InvalidArgumentError, match="several components .* --component"):
        convert_file(tmp_path / "d.safetensors", tmp_path / "p", to="peft")
    convert_file(tmp_path / "d.safetensors", tmp_path / "p", to="peft", component="text_encoder")
    assert _dense(load(tmp_path / "p")).keys() == {"b"}


def test_refuses_input_existing_output_and_lycoris(tmp_path, rng):
    src = _peft_source(tmp_path, rng)
    with pytest.raises(InvalidArgumentError, match="refusing to overwrite the input"):
        convert_file(src, src, to="peft")
    with pytest.raises(InvalidArgumentError, match="refusing to overwrite the input"):
        convert_file(src, src / "adapter_model.safetensors", to="kohya")
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    with pytest.raises(InvalidArgumentError, match="output already exists"):
        convert_file(src, tmp_path / "exists.safetensors", to="kohya")
    loha = {f"lycoris_x.hada_w{i}_{s}": (np.ones(shape), "fp32") for i in (1, 2)
            for s, shape in (("a", (4, 2)), ("b", (2, 3)))}  # fmt: skip
    write_safetensors_raw(tmp_path / "loha.safetensors", loha)
    with pytest.raises(
        UnsupportedError, match=r"layer lycoris_x: cannot convert \(LyCORIS loha is not a LoRA\)"
    ):
        convert_file(tmp_path / "loha.safetensors", tmp_path / "o.safetensors", to="kohya")
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_convert_json_and_error(tmp_path, rng, capsys):
    src = _peft_source(tmp_path, rng)
    assert main(["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "kohya", "--json"]) == 0
    out = strict_json(capsys.readouterr().out)
    assert out["n_layers"] == 4 and out["format"] == "kohya" and out["source_format"] == "peft"
    assert main(["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "kohya"]) != 0
    err = capsys.readouterr().err
    assert "output already exists" in err and err.count("\n") <= 2


def test_modules_to_save_refused_for_kohya_kept_for_peft(tmp_path, rng):
    a, b = rng.standard_normal((2, 6)), rng.standard_normal((6, 2))
    cfg = peft_config(r=2, lora_alpha=2, modules_to_save=["score"])
    saved = {"base_model.model.score.modules_to_save.default.weight": (np.ones((3, 6)), "fp32")}
    src = write_peft(tmp_path / "s", {"m.q_proj": (a, b)}, config=cfg, extra=saved)
    with pytest.raises(
        UnsupportedError, match=r"modules_to_save \(score\) are full weights that kohya files"
    ):
        convert_file(src, tmp_path / "k.safetensors", to="kohya")
    convert_file(src, tmp_path / "p", to="peft")
    back = load(tmp_path / "p")
    assert back.modules_to_save == ("score",)
    _same(_dense(load(src)), _dense(back))


def test_diffusers_output_directory_and_kohya_needs_a_file(tmp_path, rng):
    src = _peft_source(tmp_path, rng)
    convert_file(src, tmp_path / "out", to="diffusers")
    assert detect(tmp_path / "out") == "diffusers"
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    with pytest.raises(InvalidArgumentError, match="kohya output is one file"):
        convert_file(src, tmp_path / "kdir", to="kohya")


@pytest.mark.parametrize("to", ["kohya", "diffusers"])
def test_bf16_stays_bf16_and_exact(tmp_path, rng, to):
    layers = {"m.q_proj": (rng.standard_normal((4, 12)), rng.standard_normal((10, 4)))}
    src = write_peft(tmp_path / "s", layers, dtype="bf16", config=peft_config(r=4, lora_alpha=3))
    dest = tmp_path / "o.safetensors"
    convert_file(src, dest, to=to)
    out = load(dest)
    assert out.layers[0].dtype == "bf16"
    assert dest.stat().st_size < (tmp_path / "s" / "adapter_model.safetensors").stat().st_size + 4096
    np.testing.assert_array_equal(next(iter(_dense(out).values())), next(iter(_dense(load(src)).values())))


def test_peft_lycoris_peft_round_trip(tmp_path, rng):
    """A LyCORIS file of LoRA/LoCon layers: `lycoris_<path>` names, read back by its own reader."""
    src = _peft_source(tmp_path, rng)
    convert_file(src, tmp_path / "l.safetensors", to="lycoris")
    assert detect(tmp_path / "l.safetensors") == "lycoris"
    lyco = load(tmp_path / "l.safetensors")
    assert set(lyco.names) == {"lycoris_" + m.replace(".", "_") for m in [*UNET, CONV]}
    assert {x.extras["algo"] for x in lyco.layers} == {"lora"}
    convert_file(tmp_path / "l.safetensors", tmp_path / "back", to="peft")
    _same(_dense(load(src)), _dense(load(tmp_path / "back")))
    convert_file(tmp_path / "l.safetensors", tmp_path / "k.safetensors", to="kohya")
    kd = {n.removeprefix("lora_unet_"): d for n, d in _dense(load(tmp_path / "k.safetensors")).items()}
    _same({m.replace(".", "_"): d for m, d in _dense(load(src)).items()}, kd)


def test_flat_names_without_metadata_stay_flat(tmp_path, rng):
    """A kohya file with no dotted names converts to LyCORIS (names kept), not to PEFT."""
    t = {
        "lora_unet_a_b.lora_down.weight": (rng.standard_normal((2, 7)), "fp32"),
        "lora_unet_a_b.lora_up.weight": (rng.standard_normal((4, 2)), "fp32"),
        "lora_unet_a_b.alpha": (np.array(1.0), "fp32"),
    }
    write_safetensors_raw(tmp_path / "k.safetensors", t)
    convert_file(tmp_path / "k.safetensors", tmp_path / "l.safetensors", to="lycoris")
    back = load(tmp_path / "l.safetensors", format="lycoris")  # sd-scripts names: detected as kohya
    assert detect(tmp_path / "l.safetensors") == "kohya" and back.names == ("lora_unet_a_b",)
    _same(_dense(load(tmp_path / "k.safetensors")), _dense(back))
    with pytest.raises(UnsupportedError, match=r"layer lora_unet_a_b: kohya names are flattened"):
        convert_file(tmp_path / "k.safetensors", tmp_path / "p", to="peft")


def test_embedding_lora_converts_to_peft_only(tmp_path, rng):
    layers = {"m.emb": (rng.standard_normal((2, 9)), rng.standard_normal((5, 2))),
              "m.q_proj": (rng.standard_normal((2, 6)), rng.standard_normal((6, 2)))}  # fmt: skip
    src = write_peft(tmp_path / "s", layers, config=peft_config(r=2, lora_alpha=4), embedding=("m.emb",))
    convert_file(src, tmp_path / "p", to="peft")
    back = load(tmp_path / "p")
    assert back.info("m.emb").kind == "embedding"
    _same(_dense(load(src)), _dense(back))
    with pytest.raises(
        UnsupportedError, match=r"layer m\.emb: cannot write it \(kohya files hold linear/conv"
    ):
        convert_file(src, tmp_path / "k.safetensors", to="kohya")
    assert not (tmp_path / "k.safetensors").exists()


def test_convert_component_prefix_and_unknown_component(tmp_path, rng):
    src = _peft_source(tmp_path, rng)
    convert_file(src, tmp_path / "k.safetensors", to="kohya", component="text_encoder")
    assert all(n.startswith("lora_te_") for n in load(tmp_path / "k.safetensors").names)
    with pytest.raises(InvalidArgumentError, match="unknown component 'vae'; choose from unet, transformer"):
        convert_file(src, tmp_path / "d.safetensors", to="diffusers", component="vae")


@pytest.mark.parametrize(("bad", "key"), [(np.nan, "lora_A"), (np.inf, "lora_B"), (-np.inf, "lora_A")])
@pytest.mark.parametrize("to", ["kohya", "peft"])
def test_nonfinite_factors_are_refused_and_nothing_is_written(tmp_path, rng, capsys, bad, key, to):
    layers = {
        n: (rng.standard_normal((4, 10)), rng.standard_normal((12, 4))) for n in ("m.q_proj", "m.v_proj")
    }
    layers["m.v_proj"][0 if key == "lora_A" else 1][1, 2] = bad
    src = write_peft(tmp_path / "src", layers, config=peft_config(r=4))
    out = tmp_path / ("out.safetensors" if to == "kohya" else "out")
    assert main(["convert", str(src), str(out), "--to", to]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(src) in err[0] and "layer m.v_proj" in err[0]
    assert f"base_model.model.m.v_proj.{key}.weight contains NaN or Inf" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_name_map_with_two_modules_on_one_name_is_a_format_error(tmp_path, rng, capsys):
    t = {
        f"lora_unet_{m}.lora_{r}.weight": (rng.standard_normal((2, 3) if r == "down" else (3, 2)), "fp32")
        for m in ("a_b", "a_c")
        for r in ("down", "up")
    }
    src = tmp_path / "k.safetensors"
    write_safetensors_raw(
        src, t, metadata={"lorascope_module_names": '{"lora_unet_a_b": "unet.a", "lora_unet_a_c": "unet.a"}'}
    )
    code = main(["convert", str(src), str(tmp_path / "p"), "--to", "peft"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (
        f"lorascope: error: {src}: metadata lorascope_module_names maps two modules to one name "
        "unet.a: lora_unet_a_b and lora_unet_a_c\n"
    )
    assert not (tmp_path / "p").exists()
