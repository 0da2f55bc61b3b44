"""Readers are total: every tensor key belongs to exactly one role of exactly one layer, or the
read fails with one line naming the keys (the CLI exits 2)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import PREFIX, peft_config, write_peft, write_safetensors_raw

from lorascope.cli.main import main
from lorascope.errors import FormatError
from lorascope.formats._keys import group_keys


def _cli_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _peft(tmp_path, rng, extra):
    a, b = rng.standard_normal((2, 6)), rng.standard_normal((5, 2))
    return write_peft(tmp_path / "p", {"x": (a, b)}, config=peft_config(r=2), extra=extra)


def test_peft_role_claimed_twice(tmp_path, rng, capsys):
    """PEFT used to keep the last lora_A and drop the other (exit 0); compress then wrote a file
    lorascope refuses."""
    src = _peft(tmp_path, rng, {f"{PREFIX}x.lora_A.other.weight": (rng.standard_normal((2, 6)), "fp32")})
    w = src / "adapter_model.safetensors"
    want = (
        f"lorascope: error: {w}: layer x: two down tensors, {PREFIX}x.lora_A.weight and "
        f"{PREFIX}x.lora_A.other.weight"
    )
    assert _cli_error(capsys, ["audit", str(src)]) == want
    assert _cli_error(capsys, ["compress", str(src), "--rank", "1", "-o", str(tmp_path / "o")]) == want
    assert not (tmp_path / "o").exists()


def test_peft_key_claimed_by_two_roles(tmp_path, rng, capsys):
    key = f"{PREFIX}x.lora_A.lora_B.weight"  # lora_A of x (adapter "lora_B") or lora_B of x.lora_A
    src = _peft(tmp_path, rng, {key: (rng.standard_normal((2, 6)), "fp32")})
    assert _cli_error(capsys, ["audit", str(src)]) == (
        f"lorascope: error: {src / 'adapter_model.safetensors'}: key {key} is claimed twice: "
        f"as down of layer {PREFIX}x and as up of layer {PREFIX}x.lora_A"
    )


def test_peft_two_keys_one_layer_name(tmp_path, rng, capsys):
    """With and without `base_model.model.`: one layer name (was an internal error, exit 70)."""
    src = _peft(tmp_path, rng, {"x.lora_B.weight": (rng.standard_normal((5, 2)), "fp32")})
    assert _cli_error(capsys, ["audit", str(src)]) == (
        f"lorascope: error: {src / 'adapter_model.safetensors'}: keys {PREFIX}x.lora_A.weight and "
        "x.lora_B.weight both name layer x"
    )


def _diffusers(tmp_path, rng, keys: dict[str, tuple]):
    path = tmp_path / "d.safetensors"
    write_safetensors_raw(path, {k: (rng.standard_normal(shape), "fp32") for k, shape in keys.items()})
    return path


def test_diffusers_role_claimed_twice_across_namings(tmp_path, rng, capsys):
    path = _diffusers(
        tmp_path,
        rng,
        {"unet.a.lora_A.weight": (2, 4), "unet.a.lora_B.weight": (3, 2), "unet.a.lora.down.weight": (2, 4)},
    )
    assert _cli_error(capsys, ["audit", str(path)]) == (
        f"lorascope: error: {path}: layer unet.a: two down tensors, unet.a.lora_A.weight and "
        "unet.a.lora.down.weight"
    )


def test_diffusers_two_spellings_of_one_layer(tmp_path, rng, capsys):
    path = _diffusers(
        tmp_path,
        rng,
        {"unet.a.processor.to_q_lora.down.weight": (2, 4), "unet.a.to_q.lora.up.weight": (3, 2)},
    )
    assert _cli_error(capsys, ["audit", str(path)]) == (
        f"lorascope: error: {path}: keys unet.a.processor.to_q_lora.down.weight and "
        "unet.a.to_q.lora.up.weight both name layer unet.a.to_q"
    )


def test_group_keys_refuses_every_ambiguity():
    """The shared grouping of kohya / LyCORIS / diffusers / PEFT: never an overwrite."""
    rules = (
        ("down", re.compile(r"^(?P<m>[a-z_]+)\.down$")),
        ("down", re.compile(r"^(?P<m>[a-z_]+)\.d$")),
        ("up", re.compile(r"^(?P<m>[a-z_]+)\.up$")),
    )
    by_layer, left = group_keys(["a.down", "a.up", "b.down", "zzz"], rules, "f")
    assert by_layer == {"a": {"down": "a.down", "up": "a.up"}, "b": {"down": "b.down"}} and left == ["zzz"]
    with pytest.raises(FormatError, match=r"^f: layer a: two down tensors, a\.down and a\.d$"):
        group_keys(["a.down", "a.up", "a.d"], rules, "f")
    with pytest.raises(FormatError, match=r"^f: keys a\.down and b\.up both name layer x$") as err:
        group_keys(["a.down", "b.up"], rules, "f", rename=lambda m: "x")
    assert err.value.keys == ("a.down", "b.up")
    twice = (("down", re.compile(r"^(?P<m>.+)\.w$")), ("up", re.compile(r"^(?P<m>.+?)\..*w$")))
    with pytest.raises(FormatError, match=r"^f: key a\.b\.w is claimed twice: as down of layer a\.b"):
        group_keys(["a.b.w"], twice, "f")


def test_kohya_unknown_key_is_still_named(tmp_path, rng, capsys):
    path = tmp_path / "k.safetensors"
    t = {
        "lora_unet_a.lora_down.weight": (rng.standard_normal((2, 4)), "fp32"),
        "lora_unet_a.lora_up.weight": (rng.standard_normal((3, 2)), "fp32"),
        "lora_unet_a.scale": (np.ones(1), "fp32"),
    }
    write_safetensors_raw(path, t)
    assert _cli_error(capsys, ["audit", str(path)]) == (
        f"lorascope: error: {path}: 1 key(s) not understood as kohya LoRA tensors "
        "(lora_down/lora_up/alpha): lora_unet_a.scale"
    )
