"""`convert` copies factors as their stored bytes: nothing decoded, the same file, ΔW exact.

Expected bytes come from the source file parsed here (struct + json), expected values from numpy
products of the bf16-rounded inputs (`conftest.quantize`); the decode path is made to fail to show
that a conversion that changes no value never takes it."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from conftest import (
    PREFIX,
    from_bf16_bits,
    peft_config,
    quantize,
    to_bf16_bits,
    write_peft,
    write_safetensors_raw,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import lorascope.convert as convert_mod
from lorascope.cli.main import main
from lorascope.convert import convert_file
from lorascope.formats import StoredDelta, StoredFactor, load
from lorascope.formats import _write as write_mod
from lorascope.formats._io import SafetensorsSource

MODULES = (
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.self_attn.v_proj",
)


def _tensors(path) -> dict[str, tuple[str, list[int], bytes]]:
    """{key: (dtype tag, shape, stored bytes)} of a .safetensors file, parsed by hand."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    start = 8 + n
    return {k: (v["dtype"], v["shape"], raw[start + v["data_offsets"][0] : start + v["data_offsets"][1]])
            for k, v in header.items()}  # fmt: skip


def _source(tmp_path, rng, dtype="bf16"):
    """A PEFT adapter of three layers (ranks 4, 4, 2), alpha 6 (scale 1.5; 3 for the rank-2 layer)."""
    layers = {m: (rng.standard_normal((4, 24)), rng.standard_normal((16, 4))) for m in MODULES}
    layers[MODULES[2]] = (rng.standard_normal((2, 24)), rng.standard_normal((16, 2)))
    cfg = peft_config(
        r=4, lora_alpha=6, rank_pattern={"v_proj": 2}, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    return write_peft(tmp_path / "src", layers, dtype=dtype, config=cfg), layers


@pytest.fixture
def no_decoding(monkeypatch):
    """Factor reads that decode, and bf16 rounding, raise: only the stored-bytes path works."""
    real_get = SafetensorsSource.get

    def get(self, key):
        if key.endswith("weight"):
            raise AssertionError(f"decoded {key}")
        return real_get(self, key)  # a kohya alpha scalar

    def bf16_bits(x):
        raise AssertionError("rounded to bf16")

    monkeypatch.setattr(SafetensorsSource, "get", get)
    monkeypatch.setattr(write_mod, "bf16_bits", bf16_bits)


def _flat(m: str) -> str:
    return f"lora_unet_{m.replace('.', '_')}"


KEYS = {  # (down, up) key of module m in each target
    "kohya": lambda m: (f"{_flat(m)}.lora_down.weight", f"{_flat(m)}.lora_up.weight"),
    "diffusers": lambda m: (f"unet.{m}.lora_A.weight", f"unet.{m}.lora_B.weight"),
    "peft": lambda m: (f"{PREFIX}{m}.lora_A.weight", f"{PREFIX}{m}.lora_B.weight"),
}  # fmt: skip


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("to", ["kohya", "diffusers", "peft"])
def test_factors_are_copied_as_stored_without_decoding(tmp_path, rng, no_decoding, to, dtype):
    src, _ = _source(tmp_path, rng, dtype)
    dest = tmp_path / ("out.safetensors" if to != "peft" else "out")
    convert_file(src, dest, to=to)
    source = _tensors(src / "adapter_model.safetensors")
    out = _tensors(dest / "adapter_model.safetensors" if to == "peft" else dest)
    for m in MODULES:
        for theirs, ours in zip(KEYS["peft"](m), KEYS[to](m), strict=True):
            assert out[ours] == source[theirs], (m, ours)


def test_bf16_round_trip_keeps_every_byte_and_delta_w_exactly(tmp_path, rng, monkeypatch, no_decoding):
    src, layers = _source(tmp_path, rng)
    convert_file(src, tmp_path / "k.safetensors", to="kohya")
    convert_file(tmp_path / "k.safetensors", tmp_path / "back", to="peft")
    monkeypatch.undo()  # decoding allowed again: the checks below read values
    before, after = (
        _tensors(src / "adapter_model.safetensors"),
        _tensors(tmp_path / "back/adapter_model.safetensors"),
    )
    assert after == before
    kohya = _tensors(tmp_path / "k.safetensors")
    for m, (a, b) in layers.items():
        flat = _flat(m)
        r = a.shape[0]
        assert kohya[f"{flat}.alpha"] == ("F64", [], struct.pack("<d", 6.0))
        truth = 6.0 / r * (quantize(b, "bf16") @ quantize(a, "bf16"))  # (out, in) dense, float64
        np.testing.assert_array_equal(load(tmp_path / "k.safetensors").delta(flat).dense(), truth, err_msg=m)
        np.testing.assert_array_equal(load(tmp_path / "back").delta(m).dense(), truth, err_msg=m)


def test_a_wider_up_factor_is_still_rounded_to_the_layers_dtype(tmp_path, rng):
    """down bf16, up fp32: the layer's dtype is bf16 and up is rounded to it, as before (values change,
    so that factor goes through the decode → round path)."""
    a, b = rng.standard_normal((2, 8)), rng.standard_normal((6, 2))
    tensors = {f"{PREFIX}m.q_proj.lora_A.weight": (a, "bf16"), f"{PREFIX}m.q_proj.lora_B.weight": (b, "fp32")}
    src = tmp_path / "s"
    src.mkdir()
    (src / "adapter_config.json").write_text(json.dumps(peft_config(r=2, lora_alpha=2)))
    write_safetensors_raw(src / "adapter_model.safetensors", tensors)
    convert_file(src, tmp_path / "k.safetensors", to="kohya")
    out = _tensors(tmp_path / "k.safetensors")
    down, up = out["lora_unet_m_q_proj.lora_down.weight"], out["lora_unet_m_q_proj.lora_up.weight"]
    assert down == ("BF16", [2, 8], to_bf16_bits(a).astype("<u2").tobytes())
    bits = to_bf16_bits(np.float32(b))  # fp32 as stored, then rounded to nearest even
    assert up == ("BF16", [6, 2], bits.astype("<u2").tobytes())


@pytest.mark.parametrize(("bits", "key"), [(0x7FC1, "lora_A"), (0xFF80, "lora_B"), (0x7F80, "lora_A")])
def test_nonfinite_bf16_is_refused_from_its_bits(tmp_path, rng, capsys, bits, key):
    """NaN (with a payload), -Inf, +Inf stored as bf16: one line naming the tensor, nothing written."""
    src, _ = _source(tmp_path, rng)
    path = src / "adapter_model.safetensors"
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + n])[f"{PREFIX}{MODULES[1]}.{key}.weight"]
    at = 8 + n + entry["data_offsets"][0] + 2 * 5  # the sixth element
    raw[at : at + 2] = struct.pack("<H", bits)
    path.write_bytes(bytes(raw))
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--to", "kohya"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"lorascope: error: {src}: layer {MODULES[1]}: "
        f"tensor {PREFIX}{MODULES[1]}.{key}.weight contains NaN or Inf"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_source_truncated_while_converting_is_one_line_and_writes_nothing(tmp_path, rng, monkeypatch, capsys):
    src, _ = _source(tmp_path, rng)
    weights = src / "adapter_model.safetensors"
    real_load = convert_mod.load

    def load_then_truncate(*args, **kwargs):
        adapter = real_load(*args, **kwargs)
        os.truncate(weights, weights.stat().st_size - 100)  # the last 100 bytes of data go
        return adapter

    monkeypatch.setattr(convert_mod, "load", load_then_truncate)
    out = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(out), "--to", "kohya"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    first = f"{PREFIX}{MODULES[0]}.lora_A.weight"  # (4, 24) bf16: read whole, but the file shrank
    assert err[0].startswith(
        f"lorascope: error: {weights}: file changed or truncated while reading: "
        f"tensor '{first}' got 192 of 192 bytes"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_stored_layers_decode_to_what_the_source_reads_and_a_tucker_layer_is_decoded(tmp_path, rng):
    src, _ = _source(tmp_path, rng)
    adapter = load(src)
    source = SafetensorsSource(adapter.path + "/adapter_model.safetensors")  # the decoding read, `get`
    for info in adapter.layers:
        stored = adapter.loader(info)
        assert isinstance(stored, StoredDelta) and stored.nonfinite() is None
        down, up = (source.get(k) for k in info.extras["keys"])
        assert stored.down.dtype == down.dtype == np.float32
        np.testing.assert_array_equal(stored.down, down.reshape(stored.down.shape))
        np.testing.assert_array_equal(stored.up, up.reshape(stored.up.shape))
    t = {
        "lora_unet_c.lora_down.weight": (rng.standard_normal((2, 3, 1, 1)), "fp32"),
        "lora_unet_c.lora_mid.weight": (rng.standard_normal((2, 2, 3, 3)), "fp32"),
        "lora_unet_c.lora_up.weight": (rng.standard_normal((5, 2, 1, 1)), "fp32"),
    }
    write_safetensors_raw(tmp_path / "t.safetensors", t)
    tucker = load(tmp_path / "t.safetensors")
    assert not isinstance(tucker.loader(tucker.layers[0]), StoredDelta)  # folded: computed, not stored


SPECIAL = {  # bit patterns around the exponent boundary of each dtype (sign bit both ways)
    "bf16": [0x0000, 0x0001, 0x7F7F, 0x7F80, 0x7FC1, 0x8000, 0xFF7F, 0xFF80, 0xFFFF],
    "fp16": [0x0000, 0x0001, 0x7BFF, 0x7C00, 0x7E01, 0x8000, 0xFBFF, 0xFC00, 0xFFFF],
    "fp32": [0, 1, 0x7F7FFFFF, 0x7F800000, 0x7FC00001, 0x80000000, 0xFF7FFFFF, 0xFF800000, 0xFFFFFFFF],
    "fp64": [0, 1, 0x7FEFFFFFFFFFFFFF, 0x7FF0000000000000, 0x7FF8000000000001, 1 << 63, 0xFFEFFFFFFFFFFFFF,
             0xFFF0000000000000, 0xFFFFFFFFFFFFFFFF],
}  # fmt: skip
UINT = {"bf16": "<u2", "fp16": "<u2", "fp32": "<u4", "fp64": "<u8"}


def _reference_finite(bits: np.ndarray, kind: str) -> bool:
    """Decoded independently: numpy's own floats, bf16 as the high half of a float32."""
    values = (
        from_bf16_bits(bits)
        if kind == "bf16"
        else bits.view({"fp16": "<f2", "fp32": "<f4", "fp64": "<f8"}[kind])
    )
    return bool(np.isfinite(values).all())


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(sorted(SPECIAL)), picks=st.lists(st.integers(0, 8), max_size=6), data=st.data())
def test_nonfinite_from_bits_agrees_with_numpy(kind, picks, data):
    width = np.dtype(UINT[kind]).itemsize * 8
    count = data.draw(st.integers(0, 300_000))  # beyond one check step (2**17 elements)
    seed = data.draw(st.integers(0, 2**32 - 1))
    bits = np.random.default_rng(seed).integers(0, 1 << min(width, 63), size=count, dtype=np.uint64)
    bits = (bits & ~np.uint64(0) >> np.uint64(64 - width)).astype(UINT[kind])  # random finite or not
    finite_bits = bits.copy()
    if count:
        exponent = {"bf16": 0x7F80, "fp16": 0x7C00, "fp32": 0x7F800000, "fp64": 0x7FF0000000000000}[kind]
        finite_bits[(finite_bits & exponent) == exponent] = 0  # all finite
        for i, p in enumerate(picks):
            finite_bits[(i * 7919 + count - 1) % count] = SPECIAL[kind][p]
    for arr in (bits, finite_bits):
        factor = StoredFactor(arr, kind, (arr.size,))
        assert factor.nonfinite() == (not _reference_finite(arr, kind))


@pytest.mark.parametrize("at", [0, 2**17 - 1, 2**17, 2**17 + 2, None])
def test_nonfinite_at_check_step_boundaries(at):
    """One -Inf among 2**17 + 3 bf16 values (the check runs in steps of 2**17 elements)."""
    bits = to_bf16_bits(np.linspace(-3e38, 3e38, 2**17 + 3))  # finite, both signs, up to the largest
    if at is not None:
        bits[at] = 0xFF80
    assert StoredFactor(bits, "bf16", (bits.size,)).nonfinite() == (at is not None)
