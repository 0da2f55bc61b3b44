"""LyCORIS LoHa / LoKr: files written by the real `lycoris-lora` package, spectra vs dense SVD."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_safetensors_raw

from lorascope.audit import audit_adapter
from lorascope.errors import FormatError
from lorascope.formats import detect, load

# (algo, options, linear_dim): every storage variant LyCORIS 4.1.3 produces for Linear and Conv2d.
CASES = {
    "loha": ("loha", {}, 4),
    "loha_tucker": ("loha", {"use_tucker": True}, 4),
    "lokr_w1_full_w2_factored": ("lokr", {"factor": 4}, 2),
    "lokr_tucker": ("lokr", {"factor": 4, "use_tucker": True}, 2),
    "lokr_both_factored": ("lokr", {"factor": 8, "decompose_both": True}, 1),
    "lokr_full_matrix": ("lokr", {"factor": 4, "full_matrix": True}, 4),
    "locon_tucker": ("locon", {"use_tucker": True}, 4),  # lora_down/lora_mid/lora_up in a LyCORIS file
}


def _build(tmp_path, algo, options, dim, seed):
    torch = pytest.importorskip("torch")
    lycoris = pytest.importorskip("lycoris")
    torch.manual_seed(seed)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(48, 64)
            self.conv = torch.nn.Conv2d(32, 48, 3)

    model = Tiny()
    net = lycoris.create_lycoris(
        model, 1.0, linear_dim=dim, linear_alpha=3, conv_dim=dim, conv_alpha=3, algo=algo, **options
    )
    net.apply_to()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = tmp_path / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float32, None)
    # ΔW as the forward pass applies it: get_weight includes alpha/r once.  (LyCORIS 4.1.3's
    # get_diff_weight multiplies by the scale a second time, so it is not used as ground truth.)
    truth = {}
    model.double(), net.double()  # the file holds fp32 values; float64 makes the ground truth exact
    with torch.no_grad():
        for module in net.loras:
            # LoCon: make_weight is unscaled and get_diff_weight scales once.
            w = (
                module.get_weight(module.shape)
                if hasattr(module, "get_weight")
                else module.get_diff_weight()[0]
            )
            truth[module.lora_name] = w.double().reshape(w.shape[0], -1).numpy()  # (out, in·kh·kw)
        eye = torch.eye(48, dtype=torch.float64)
        applied = model.fc1(eye) - torch.nn.functional.linear(
            eye, model.fc1.weight, model.fc1.bias
        )  # (in, out)
    np.testing.assert_allclose(applied.double().numpy().T, truth["lycoris_fc1"], rtol=1e-10, atol=1e-10)
    return path, truth


@pytest.mark.torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_lycoris_spectra_match_dense_svd(tmp_path, case):
    algo, options, dim = CASES[case]
    path, truth = _build(tmp_path, algo, dict(options), dim, seed=len(case))
    assert detect(path) == "lycoris"
    report = audit_adapter(path)
    assert {x.name for x in report.layers} == set(truth)
    for layer in report.layers:
        dense = np.linalg.svd(truth[layer.name], compute_uv=False)
        k = min(len(dense), len(layer.sigma))
        assert np.all(layer.sigma[k:] <= 1e-9 * dense[0])
        np.testing.assert_allclose(layer.sigma[:k], dense[:k], rtol=1e-6, atol=1e-9 * dense[0])
        assert layer.info.extras["algo"] == {"locon": "lora"}.get(algo, algo)
        assert layer.info.extras["max_rank"] >= np.sum(dense > 1e-8 * dense[0])
    conv = next(x for x in report.layers if x.name.endswith("conv"))
    assert conv.info.out_features == 48 and conv.info.in_features == 32 * 9


def _loha_tensors(rng, r=3, out=10, inn=7):
    t = {
        f"lycoris_x.hada_w{i}_{s}": (rng.standard_normal(shape), "fp64")
        for i in (1, 2)
        for s, shape in (("a", (out, r)), ("b", (r, inn)))
    }
    t["lycoris_x.alpha"] = (np.array(1.5), "fp32")
    return t


def test_loha_alpha_scale_and_khatri_rao_exact(tmp_path, rng):
    t = _loha_tensors(rng)
    write_safetensors_raw(tmp_path / "l.safetensors", t)
    a = load(tmp_path / "l.safetensors")
    g = {k.split(".")[1]: v[0] for k, v in t.items()}
    dense = 0.5 * (g["hada_w1_a"] @ g["hada_w1_b"]) * (g["hada_w2_a"] @ g["hada_w2_b"])  # alpha 1.5 / r 3
    info = a.layers[0]
    assert (info.rank, info.scale, info.extras["max_rank"]) == (3, 0.5, 7)
    np.testing.assert_allclose(a.delta("lycoris_x").dense(), dense, rtol=1e-12, atol=1e-12)


def test_missing_loha_factor_is_named(tmp_path, rng):
    t = _loha_tensors(rng)
    del t["lycoris_x.hada_w2_b"]
    write_safetensors_raw(tmp_path / "l.safetensors", t)
    with pytest.raises(FormatError, match=r"layer lycoris_x: missing hada_w2_b tensor\(s\) beside"):
        load(tmp_path / "l.safetensors")


def test_wrong_alpha_shape_and_unknown_keys(tmp_path, rng):
    t = _loha_tensors(rng)
    t["lycoris_x.alpha"] = (np.ones(3), "fp32")
    write_safetensors_raw(tmp_path / "a.safetensors", t)
    with pytest.raises(
        FormatError, match=r"lycoris_x.alpha must be a single number \(alpha\), got shape \[3\]"
    ):
        load(tmp_path / "a.safetensors")
    t = _loha_tensors(rng)
    t["lycoris_x.oft_blocks"] = (np.ones((2, 2)), "fp32")
    write_safetensors_raw(tmp_path / "u.safetensors", t)
    with pytest.raises(FormatError, match=r"1 key\(s\) not understood as LyCORIS .*: lycoris_x.oft_blocks$"):
        load(tmp_path / "u.safetensors")


def test_lokr_mismatched_factor_ranks(tmp_path, rng):
    t = {
        "lora_unet_x.lokr_w1": (rng.standard_normal((2, 2)), "fp32"),
        "lora_unet_x.lokr_w2_a": (rng.standard_normal((8, 3)), "fp32"),
        "lora_unet_x.lokr_w2_b": (rng.standard_normal((2, 8)), "fp32"),
    }
    write_safetensors_raw(tmp_path / "k.safetensors", t)
    with pytest.raises(FormatError, match=r"lokr_w2_a and lokr_w2_b ranks differ"):
        load(tmp_path / "k.safetensors")


def test_loha_bad_factor_dims_are_format_errors(tmp_path, rng):
    t = _loha_tensors(rng)
    t["lycoris_x.hada_w2_a"] = (np.ones((10, 3, 1)), "fp32")
    write_safetensors_raw(tmp_path / "d.safetensors", t)
    with pytest.raises(
        FormatError, match=r"layer lycoris_x: LoHa factors must be 2-D \(.*hada_w2_a \[10, 3, 1\]"
    ):
        load(tmp_path / "d.safetensors")
    t = _loha_tensors(rng)
    t["lycoris_x.hada_w2_b"] = (np.ones((3, 8)), "fp32")
    write_safetensors_raw(tmp_path / "s.safetensors", t)
    with pytest.raises(FormatError, match="LoHa factor shapes do not fit together"):
        load(tmp_path / "s.safetensors")


def test_compress_writes_locon_layers_and_refuses_loha_before_any_work(tmp_path, rng, capsys):
    from lorascope.cli.main import main

    t = {
        "lycoris_a.lora_down.weight": (rng.standard_normal((4, 9)), "fp32"),
        "lycoris_a.lora_up.weight": (rng.standard_normal((7, 4)), "fp32"),
        "lycoris_a.alpha": (np.array(2.0), "fp32"),
    }
    write_safetensors_raw(tmp_path / "locon.safetensors", t)
    assert (
        main(["compress", str(tmp_path / "locon.safetensors"), "--rank", "2", "-o", str(tmp_path / "o")]) == 2
    )
    want = f"lorascope: error: {tmp_path / 'o'}: a lycoris output is one file: give a path ending in"
    assert capsys.readouterr().err == want + " .safetensors\n"
    out = tmp_path / "o.safetensors"
    assert main(["compress", str(tmp_path / "locon.safetensors"), "--rank", "2", "-o", str(out)]) == 0
    small, big = load(out), load(tmp_path / "locon.safetensors")
    assert small.format == "lycoris" and small.info("lycoris_a").rank == 2
    sigma = np.linalg.svd(big.delta("lycoris_a").dense(), compute_uv=False)
    got = np.linalg.svd(small.delta("lycoris_a").dense(), compute_uv=False)
    np.testing.assert_allclose(got[:2], sigma[:2], rtol=1e-5)

    write_safetensors_raw(tmp_path / "loha.safetensors", _loha_tensors(rng))
    dest = tmp_path / "h.safetensors"
    assert main(["compress", str(tmp_path / "loha.safetensors"), "--rank", "2", "-o", str(dest)]) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {tmp_path / 'loha.safetensors'}: layer lycoris_x: cannot write it "
        "(LyCORIS loha is not a LoRA; writers hold plain LoRA layers)\n"
    )
    assert not dest.exists()


def test_merge_writes_lycoris_locon_and_refuses_loha_first(tmp_path, rng, capsys):
    from lorascope.cli.main import main

    paths = []
    for i in range(2):
        t = {
            "lycoris_a.lora_down.weight": (rng.standard_normal((2, 9)), "fp32"),
            "lycoris_a.lora_up.weight": (rng.standard_normal((7, 2)), "fp32"),
            "lycoris_a.alpha": (np.array(1.0 + i), "fp32"),
        }
        paths.append(tmp_path / f"l{i}.safetensors")
        write_safetensors_raw(paths[-1], t)
    assert main(["merge", *map(str, paths), "-o", str(tmp_path / "m.safetensors"), "-q"]) == 0, (
        capsys.readouterr()
    )
    merged = load(tmp_path / "m.safetensors")
    want = sum(load(p).delta("lycoris_a").dense() for p in paths)
    assert merged.format == "lycoris" and merged.info("lycoris_a").rank == 4
    np.testing.assert_allclose(merged.delta("lycoris_a").dense(), want, rtol=1e-6, atol=1e-6)

    write_safetensors_raw(tmp_path / "h.safetensors", _loha_tensors(rng))
    assert (
        main(["merge", str(tmp_path / "h.safetensors"), str(paths[0]), "-o", str(tmp_path / "x.safetensors")])
        == 2
    )
    assert capsys.readouterr().err == (
        f"lorascope: error: {tmp_path / 'h.safetensors'}: layer lycoris_x: cannot write it "
        "(LyCORIS loha is not a LoRA; writers hold plain LoRA layers)\n"
    )
