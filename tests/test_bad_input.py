"""Bad input: every case is one stderr line naming the file and the problem, exit ≠ 0, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import PREFIX, layer_names, peft_config, random_factors, write_peft

from lorascope.cli.main import main

W = "adapter_model.safetensors"
C = "adapter_config.json"


def _good(d, rng, **kw):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(3)}
    return write_peft(d, layers, config=peft_config(r=4), **kw), layers


def missing_dir(d, rng):
    return d / "nope", "nope", "no such file or directory"


def missing_config(d, rng):
    _good(d, rng)
    (d / C).unlink()
    return d, str(d), "unknown adapter format"


def missing_weights(d, rng):
    _good(d, rng)
    (d / W).unlink()
    return d, str(d), "no adapter_model.safetensors"


def malformed_json(d, rng):
    _good(d, rng)
    (d / C).write_text('{"r": 4, "lora_alpha": ')
    return d, C, "malformed JSON at line 1"


def config_not_object(d, rng):
    _good(d, rng)
    (d / C).write_text("[1, 2]")
    return d, C, "expected a JSON object"


def bad_r(d, rng):
    _good(d, rng)
    (d / C).write_text(json.dumps(peft_config(r=0)))
    return d, C, "'r' must be a positive integer"


def infinite_alpha(d, rng):
    _good(d, rng)
    (d / C).write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": Infinity}')
    return d, C, "'lora_alpha' must be a finite number"


def bad_pattern_rank(d, rng):
    _good(d, rng)
    (d / C).write_text(json.dumps(peft_config(r=4, rank_pattern={"q_proj": "four"})))
    return d, C, "rank_pattern"


def not_lora(d, rng):
    _good(d, rng)
    (d / C).write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    return d, C, "not a LoRA adapter"


def a_without_b(d, rng):
    a, _ = random_factors(rng, 12, 10, 4)
    _good(d, rng, extra={f"{PREFIX}model.extra.lora_A.weight": (a, "fp32")})
    return d, W, "model.extra.lora_A.weight has no matching lora_B"


def rank_mismatch(d, rng):
    a, _ = random_factors(rng, 12, 10, 4)
    _, b = random_factors(rng, 12, 10, 3)
    extra = {f"{PREFIX}model.x.lora_A.weight": (a, "fp32"), f"{PREFIX}model.x.lora_B.weight": (b, "fp32")}
    _good(d, rng, extra=extra)
    return d, W, "rank mismatch"


def config_rank_differs(d, rng):
    _good(d, rng)
    (d / C).write_text(json.dumps(peft_config(r=8)))
    return d, W, "tensors have rank 4 but adapter_config.json gives r=8"


def outlier_shape(d, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(5)}
    layers["model.layers.2.self_attn.q_proj"] = random_factors(rng, 12, 9, 4)
    write_peft(d, layers, config=peft_config(r=4))
    return d, W, "model.layers.2.self_attn.q_proj: shape (out=12, in=9) is inconsistent with its 4 sibling"


def nan_values(d, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(3)}
    layers["model.layers.1.self_attn.v_proj"][1][3, 2] = np.nan
    write_peft(d, layers, config=peft_config(r=4), dtype="fp16")
    return d, "model.layers.1.self_attn.v_proj.lora_B.weight", "contains NaN or Inf"


def inf_values(d, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(3)}
    layers["model.layers.0.self_attn.q_proj"][0][0, 0] = np.inf
    write_peft(d, layers, config=peft_config(r=4), dtype="bf16")
    return d, "model.layers.0.self_attn.q_proj.lora_A.weight", "contains NaN or Inf"


def int8_dtype(d, rng):
    _good(d, rng, dtype="i8")
    return d, W, "dtype I8"


def fp8_dtype(d, rng):
    _good(d, rng, dtype="f8")
    return d, W, "F8_E4M3"


def truncated(d, rng):
    _good(d, rng)
    data = (d / W).read_bytes()
    (d / W).write_bytes(data[:-40])
    return d, W, "truncated safetensors file"


def garbage_weights(d, rng):
    _good(d, rng)
    (d / W).write_bytes(b"\x00\x01")
    return d, W, "not a safetensors file"


def header_not_json(d, rng):
    _good(d, rng)
    (d / W).write_bytes((10).to_bytes(8, "little") + b"{not json}" + b"\x00" * 16)
    return d, W, "header is not JSON"


def empty_adapter(d, rng):
    write_peft(d, {}, config=peft_config(r=4))
    return d, W, "no LoRA layers found"


def only_modules_to_save(d, rng):
    extra = {f"{PREFIX}classifier.weight": (rng.random((2, 4)), "fp32")}
    write_peft(d, {}, config=peft_config(r=4, modules_to_save=["classifier"]), extra=extra)
    return d, W, "no LoRA layers found"


def several_adapters(d, rng):
    _good(d / "one", rng)
    _good(d / "two", rng)
    return d, str(d), "several adapters (one, two)"


def unknown_keys(d, rng):
    _good(d, rng, extra={f"{PREFIX}model.hada_w1_a": (rng.random((2, 2)), "fp32")})
    return d, W, "not understood as PEFT LoRA tensors"


CASES = [
    missing_dir,
    missing_config,
    missing_weights,
    malformed_json,
    config_not_object,
    bad_r,
    infinite_alpha,
    bad_pattern_rank,
    not_lora,
    a_without_b,
    rank_mismatch,
    config_rank_differs,
    outlier_shape,
    nan_values,
    inf_values,
    int8_dtype,
    fp8_dtype,
    truncated,
    garbage_weights,
    header_not_json,
    empty_adapter,
    only_modules_to_save,
    several_adapters,
    unknown_keys,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["text", "json"])
def test_one_line_error(tmp_path, rng, capsys, case, mode):
    path, names, problem = case(tmp_path / "adapter", rng)
    argv = ["audit", str(path)] + (["--json"] if mode == "json" else [])
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""  # nothing half-written on stdout
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lorascope: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    assert names in lines[0], err
    assert problem in lines[0], err


def test_subprocess_exit_code_and_single_line(tmp_path, rng):
    path, _, _ = truncated(tmp_path / "adapter", rng)
    p = subprocess.run(
        [sys.executable, "-m", "lorascope", "audit", str(path), "--json"], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "truncated safetensors file" in p.stderr and W in p.stderr


def test_cli_argument_errors(tmp_path, rng, capsys):
    path, _ = _good(tmp_path / "a", rng)
    for argv, msg in [
        (["audit"], "needs an adapter path"),
        (["audit", str(path), "--rounding", "cubes"], "rounding must be"),
        (["audit", str(path), "--threshold", "1.5"], "energy threshold must be in (0, 1]"),
        (["audit", str(path), "--threshold", "0.9", "--threshold", "0.9"], "energy thresholds repeat"),
        (["audit", str(path), "--min-rank", "0"], "min rank"),
        (["audit", str(path), "--top-wasteful", "-1"], "--top-wasteful"),
        (["audit", str(path), "--format", "onnx"], "unknown format 'onnx'"),
        (["audit", str(path), "--peft-dir", str(tmp_path)], "not both"),
        (["audit", str(path), "-o", str(path / W)], "refusing to overwrite the input"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0 and msg in err and err.count("\n") == 1, (argv, err)
    assert (path / W).read_bytes()[8:9] == b"{"  # the input is untouched (still safetensors)
