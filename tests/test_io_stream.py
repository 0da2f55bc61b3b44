"""`SafetensorsWriter`: streamed tensors give the exact bytes of the one-shot writer, atomically."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lorascope.compress.compress import round_to_dtype
from lorascope.errors import UnsupportedError
from lorascope.formats._io import SafetensorsWriter, bf16_bits, open_safetensors

_NP = {"fp64": "<f8", "fp32": "<f4", "fp16": "<f2"}
_TAG = {"fp64": "F64", "fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def reference_bytes(tensors: dict, metadata: dict | None) -> bytes:
    """The layout written before streaming existed (sorted keys, 8-byte padded JSON header)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for key in sorted(tensors):
        arr, dtype = tensors[key]
        raw = bf16_bits(arr).tobytes() if dtype == "bf16" else np.asarray(arr, _NP[dtype]).tobytes()
        header[key] = {
            "dtype": _TAG[dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def tensors_of(rng, dtype: str) -> dict:
    out = {}
    for key, shape in [("b.lora_B.weight", (7, 3)), ("a.lora_A.weight", (3, 5)), ("c.alpha", ())]:
        x = rng.standard_normal(shape)  # float64
        x = round_to_dtype(x, dtype) if dtype != "fp64" else x  # bf16: float32 holding bf16 values
        out[key] = (x, dtype)
    return out


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_streamed_bytes_equal_the_one_shot_writer(tmp_path, rng, dtype, metadata):
    tensors = tensors_of(rng, dtype)
    with SafetensorsWriter(tmp_path / "s.safetensors") as w:
        for key in ["c.alpha", "b.lora_B.weight", "a.lora_A.weight"]:  # not sorted: close() sorts
            w.add(key, *tensors[key])
        w.close(metadata)
    want = reference_bytes(tensors, metadata)
    assert (tmp_path / "s.safetensors").read_bytes() == want
    back = open_safetensors(tmp_path / "s.safetensors")
    for key, (arr, _) in tensors.items():
        np.testing.assert_array_equal(back.get(key), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    # the safetensors library reads the hand-written file as written (bf16: through torch)
    torch = pytest.importorskip("torch") if dtype == "bf16" else None
    if torch is None:
        from safetensors.numpy import load_file

        lib = load_file(str(tmp_path / "s.safetensors"))
    else:
        from safetensors.torch import load_file

        lib = {k: v.float().numpy() for k, v in load_file(str(tmp_path / "s.safetensors")).items()}
    assert set(lib) == set(tensors)
    for key, (arr, _) in tensors.items():
        np.testing.assert_array_equal(np.asarray(lib[key], np.float64), np.asarray(arr, np.float64))


def test_a_key_added_twice_keeps_the_last_array(tmp_path, rng):
    first, last = rng.standard_normal((2, 2)), rng.standard_normal((3, 2))
    with SafetensorsWriter(tmp_path / "s.safetensors") as w:
        w.add("x", first, "fp64")
        w.add("x", last, "fp64")
        w.close()
    assert (tmp_path / "s.safetensors").read_bytes() == reference_bytes({"x": (last, "fp64")}, None)


def test_an_error_midway_leaves_no_file(tmp_path, rng):
    dest = tmp_path / "out" / "s.safetensors"
    with pytest.raises(UnsupportedError, match="cannot write tensor 'bad' as int8"):
        with SafetensorsWriter(dest) as w:
            w.add("a", rng.standard_normal((4, 4)), "fp32")
            w.add("bad", rng.standard_normal((4, 4)), "int8")
            w.close()
    assert list(dest.parent.iterdir()) == []


def test_an_error_midway_keeps_an_existing_file(tmp_path, rng):
    dest = tmp_path / "s.safetensors"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), SafetensorsWriter(dest) as w:
        w.add("a", rng.standard_normal((4, 4)), "fp32")
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_a_failing_layer_leaves_no_peft_directory(tmp_path, rng):
    from dataclasses import replace

    from conftest import layer_names, peft_config, random_factors, write_peft

    from lorascope.formats import load, peft

    names = layer_names(3)
    src = load(
        write_peft(tmp_path / "a", {n: random_factors(rng, 8, 6, 2) for n in names}, config=peft_config(r=2))
    )

    def loader(info):
        if info.name == names[2]:
            raise RuntimeError("layer failed")
        return src.loader(info)

    with pytest.raises(RuntimeError, match="layer failed"):
        peft.write(replace(src, loader=loader), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("room", [2048, 40])  # room for the header, and too little (falls back)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_reserved_header_room_writes_in_place(tmp_path, rng, room, dtype):
    """With `reserve`, the data file itself becomes the output: tensors in the order added, the
    header padded with spaces into its room; a header that does not fit falls back to the copy."""
    from safetensors import safe_open

    tensors = tensors_of(rng, dtype)
    order = ["c.alpha", "b.lora_B.weight", "a.lora_A.weight"]
    with SafetensorsWriter(tmp_path / "s.safetensors", reserve=room) as w:
        for key in order:
            w.add(key, *tensors[key])
        w.close({"format": "pt"})
    raw = (tmp_path / "s.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    starts = {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    if room >= 2048:
        assert n == 2048 and raw[8 : 8 + n].endswith(b" ") and sorted(starts, key=starts.get) == order
    else:
        assert raw == reference_bytes(tensors, {"format": "pt"})
    with safe_open(str(tmp_path / "s.safetensors"), framework="np") as f:  # the library accepts it
        assert sorted(f.keys()) == sorted(tensors) and f.metadata() == {"format": "pt"}
    back = open_safetensors(tmp_path / "s.safetensors")
    for key, (arr, _) in tensors.items():
        np.testing.assert_array_equal(back.get(key), arr)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_reserved_room_with_a_key_added_twice_falls_back(tmp_path, rng):
    first, last = rng.standard_normal((2, 2)), rng.standard_normal((3, 2))
    with SafetensorsWriter(tmp_path / "s.safetensors", reserve=4096) as w:
        w.add("x", first, "fp64")
        w.add("x", last, "fp64")
        w.close()
    assert (tmp_path / "s.safetensors").read_bytes() == reference_bytes({"x": (last, "fp64")}, None)


def test_outputs_get_the_umask_mode_not_the_temporary_one(tmp_path, small_adapter):
    import os

    from lorascope.cli.main import main

    src, _ = small_adapter
    old = os.umask(0o022)
    try:
        assert main(["compress", str(src), "-o", str(tmp_path / "peft"), "--rank", "2"]) == 0
        assert main(["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "kohya"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "peft").stat().st_mode & 0o777 == 0o755
    for f in [*(tmp_path / "peft").iterdir(), tmp_path / "k.safetensors"]:
        assert f.stat().st_mode & 0o777 == 0o644, f
