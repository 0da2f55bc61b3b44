"""Hostile inputs: malformed headers and configs, rank 0, huge or non-finite alphas, regex keys that
would backtrack without bound, files cut short while being read.  Every case is one stderr line
naming the file and the problem, exit code 2, never a traceback, an internal error or a hang."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PREFIX, layer_names, peft_config, random_factors, write_peft, write_safetensors_raw

from lorascope.cli.main import main
from lorascope.errors import FormatError
from lorascope.formats import load
from lorascope.formats._regex import MAX_LENGTH, backtracking_risk

W = "adapter_model.safetensors"
C = "adapter_config.json"
KEY = "lora_unet_a.lora_down.weight"


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with nothing on stdout and exactly one stderr line."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorascope: error: "), err
    assert "Traceback" not in err and "internal error" not in err
    return lines[0].removeprefix("lorascope: error: ")


def _raw_file(path: Path, header: bytes, data: bytes = b"\0" * 64) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _entry(**fields) -> bytes:
    entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **fields}
    return json.dumps({KEY: entry}).encode()


# --- 1. safetensors headers ------------------------------------------------------------------

T = f"invalid safetensors header: tensor '{KEY}': "
OFF = T + "data_offsets must be [start, end], two non-negative integers, got "
ENTRY = T + "an entry must be an object with dtype, shape and data_offsets"
META = "invalid safetensors header: __metadata__ must map strings to strings"
NOT_JSON = "not a safetensors file (header is not JSON: "
HEADERS = {
    "nested": (b"[" * 100_000 + b"]" * 100_000, NOT_JSON + "JSON nested too deeply)"),
    "long_int": (
        b'{"k": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + b"9" * 5000 + b"]}}",
        NOT_JSON + "a JSON number has too many digits)",
    ),
    "offsets_string": (_entry(data_offsets="0,4"), OFF + "'0,4'"),
    "offsets_null": (_entry(data_offsets=None), OFF + "null"),
    "offsets_one": (_entry(data_offsets=[4]), OFF + "[4]"),
    "offsets_negative": (_entry(data_offsets=[-4, 0]), OFF + "[-4, 0]"),
    "offsets_reversed": (_entry(data_offsets=[4, 0]), T + "data_offsets [4, 0] end before they start"),
    "offsets_float": (_entry(data_offsets=[0.0, 4.0]), OFF + "[0.0, 4.0]"),
    "offsets_bool": (_entry(data_offsets=[False, True]), OFF + "[False, True]"),
    "offsets_size": (_entry(data_offsets=[0, 8]), T + "shape [1] of F32 needs 4 bytes, data_offsets give 8"),
    "shape_string": (_entry(shape="1"), T + "shape must be a list of non-negative integers, got '1'"),
    "shape_negative": (_entry(shape=[-1]), T + "shape must be a list of non-negative integers, got [-1]"),
    "dtype_int": (_entry(dtype=3), T + "dtype must be a string, got 3"),
    "entry_list": (json.dumps({KEY: [1, 2]}).encode(), ENTRY),
    "entry_missing": (json.dumps({KEY: {"dtype": "F32"}}).encode(), ENTRY),
    "metadata_list": (b'{"__metadata__": [1]}', META),
    "metadata_number": (b'{"__metadata__": {"a": 1}}', META),
}


@pytest.mark.parametrize("case", HEADERS, ids=str)
def test_bad_header_is_one_line(tmp_path, capsys, case):
    header, message = HEADERS[case]
    path = _raw_file(tmp_path / "x.safetensors", header)
    assert _cli_error(capsys, ["audit", path]) == f"{path}: {message}"
    for fmt in ("kohya", "lycoris", "diffusers"):  # forcing a format reads the same header
        assert _cli_error(capsys, ["audit", path, "--format", fmt]) == f"{path}: {message}"


def test_bad_header_in_peft_directory(tmp_path, rng, capsys):
    d = write_peft(tmp_path / "a", {"x": random_factors(rng, 4, 4, 2)}, config=peft_config(r=2))
    header, message = HEADERS["offsets_null"]
    _raw_file(d / W, header)
    assert _cli_error(capsys, ["audit", d]) == f"{d / W}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"r": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"r": 4, "lora_alpha": ' + "9" * 5000 + "}", "a JSON number has too many digits"),
        (
            '{"r": 4, "lora_alpha": 1' + "0" * 400 + "}",
            "'lora_alpha' must be a finite number within float32's range",
        ),
        (b'{"r": 4, "x": "\xff"}', "not UTF-8 text"),
        ('{"peft_type": ' + "[" * 50 + "]" * 50 + "}", "is not a LoRA adapter"),
        (
            '{"r": 4, "lora_alpha": 8, "modules_to_save": 5}',
            "'modules_to_save' must be a list of module names, got 5",
        ),
    ],
)
def test_bad_adapter_config(tmp_path, rng, capsys, text, message):
    d = write_peft(tmp_path / "a", {"x": random_factors(rng, 4, 4, 4)}, config=peft_config(r=4))
    (d / C).write_bytes(text if isinstance(text, bytes) else text.encode())
    line = _cli_error(capsys, ["audit", d])
    assert line.startswith(f"{d / C}: ") and message in line, line
    assert len(line) < 300


def test_names_metadata_nested_json(tmp_path, rng, capsys):
    a, b = random_factors(rng, 4, 4, 2)
    t = {"lora_unet_a.lora_down.weight": (a, "fp32"), "lora_unet_a.lora_up.weight": (b, "fp32")}
    path = tmp_path / "k.safetensors"
    write_safetensors_raw(path, t, metadata={"lorascope_module_names": "[" * 100_000 + "]" * 100_000})
    assert _cli_error(capsys, ["audit", path]) == (
        f"{path}: metadata lorascope_module_names is not valid JSON (JSON nested too deeply)"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "metadata lorascope_peft_config is not valid JSON (malformed JSON at line 1 column 2: "
         "Expecting property name enclosed in double quotes)"),
        ('["CAUSAL_LM"]', "metadata lorascope_peft_config must be a JSON object"),
        ('{"lora_dropout": "0.1"}',
         "metadata lorascope_peft_config: lora_dropout has the wrong type ('0.1')"),
        ('{"use_rslora": 1}', "metadata lorascope_peft_config: use_rslora has the wrong type (1)"),
    ],
)  # fmt: skip
def test_peft_fields_metadata_is_validated(tmp_path, rng, capsys, value, message):
    a, b = random_factors(rng, 4, 4, 2)
    t = {"lora_unet_a.lora_down.weight": (a, "fp32"), "lora_unet_a.lora_up.weight": (b, "fp32")}
    path = tmp_path / "k.safetensors"
    write_safetensors_raw(path, t, metadata={"lorascope_peft_config": value})
    assert _cli_error(capsys, ["audit", path]) == f"{path}: {message}"


# --- 6. a .safetensors file that cannot be parsed says why, not "unknown format" ---------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01", "not a safetensors file (shorter than its 8-byte header length)"),
        (
            struct.pack("<Q", 1 << 40) + b"{}",
            "not a safetensors file (header length 1099511627776 exceeds file size 10)",
        ),
        (
            struct.pack("<Q", 4) + b"{no}",
            NOT_JSON + "malformed JSON at line 1 column 2: "
            "Expecting property name enclosed in double quotes)",
        ),
    ],
)
def test_corrupt_file_says_why(tmp_path, capsys, content, message):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    assert _cli_error(capsys, ["audit", path]) == f"{path}: {message}"
    d = tmp_path / "pipe"  # a diffusers directory holding the corrupt file
    d.mkdir()
    (d / "pytorch_lora_weights.safetensors").write_bytes(content)
    assert _cli_error(capsys, ["audit", d]) == f"{d / 'pytorch_lora_weights.safetensors'}: {message}"


def test_valid_file_without_lora_keys_is_still_unknown(tmp_path, capsys):
    path = tmp_path / "w.safetensors"
    write_safetensors_raw(path, {"model.weight": (np.ones((2, 2)), "fp32")})
    assert "unknown adapter format" in _cli_error(capsys, ["audit", path])


# --- 2. rank 0, diffusers metadata, alphas -------------------------------------------------------


def test_kohya_rank_zero(tmp_path, capsys):
    path = tmp_path / "r0.safetensors"
    t = {
        "lora_unet_a.lora_down.weight": (np.zeros((0, 4)), "fp32"),
        "lora_unet_a.lora_up.weight": (np.zeros((4, 0)), "fp32"),
        "lora_unet_a.alpha": (np.array(1.0), "fp32"),
    }
    write_safetensors_raw(path, t)
    assert _cli_error(capsys, ["audit", path]) == (
        f"{path}: layer lora_unet_a: lora_unet_a.lora_down.weight has shape [0, 4] and "
        "lora_unet_a.lora_up.weight has shape [4, 0]; a LoRA factor needs rank ≥ 1 and non-empty dimensions"
    )


def test_lycoris_rank_zero(tmp_path, capsys):
    path = tmp_path / "l0.safetensors"
    t = {
        "lycoris_a.hada_w1_a": (np.zeros((4, 0)), "fp32"),
        "lycoris_a.hada_w1_b": (np.zeros((0, 4)), "fp32"),
        "lycoris_a.hada_w2_a": (np.zeros((4, 0)), "fp32"),
        "lycoris_a.hada_w2_b": (np.zeros((0, 4)), "fp32"),
        "lycoris_a.alpha": (np.array(2.0), "fp32"),
    }
    write_safetensors_raw(path, t)
    assert _cli_error(capsys, ["audit", path]) == (
        f"{path}: layer lycoris_a: lycoris_a.hada_w1_a has shape [4, 0]; a factor needs rank ≥ 1 and "
        "non-empty dimensions"
    )


def _diffusers_file(tmp_path, rng, metadata: str) -> Path:
    a, b = rng.standard_normal((4, 8)), rng.standard_normal((8, 4))
    t = {"unet.x.to_q.lora_A.weight": (a, "fp32"), "unet.x.to_q.lora_B.weight": (b, "fp32")}
    path = tmp_path / "d" / "pytorch_lora_weights.safetensors"
    path.parent.mkdir()
    write_safetensors_raw(path, t, metadata={"lora_adapter_metadata": metadata})
    return path


M = "metadata lora_adapter_metadata unet: "
RULE = "a finite number within float32's range (|alpha| ≤ 3.4e38)"
ALPHA = f"'lora_alpha' must be {RULE}, got "
DIFFUSERS_METADATA = {
    "rank_zero": ('{"unet.r": 0, "unet.lora_alpha": 4}', M + "'r' must be a positive integer, got 0"),
    "alpha_string": ('{"unet.r": 4, "unet.lora_alpha": "4"}', M + ALPHA + "'4'"),
    "alpha_nan": ('{"unet.r": 4, "unet.lora_alpha": NaN}', M + ALPHA + "nan"),
    "alpha_inf": ('{"unet.r": 4, "unet.lora_alpha": -Infinity}', M + ALPHA + "-inf"),
    "alpha_huge": ('{"unet.r": 4, "unet.lora_alpha": 1e308}', M + ALPHA + "1e+308"),
    "alpha_long_int": (
        '{"unet.r": 4, "unet.lora_alpha": 1' + "0" * 400 + "}",
        M + ALPHA + "1" + "0" * 17 + "..." + "0" * 19,
    ),
    "rank_pattern_list": (
        '{"unet.r": 4, "unet.rank_pattern": [1]}',
        M + "'rank_pattern' must be a JSON object, got [1]",
    ),
    "alpha_pattern_nan": (
        '{"unet.r": 4, "unet.alpha_pattern": {"to_q": NaN}}',
        M + f"'alpha_pattern' value for 'to_q' must be {RULE}, got nan",
    ),
    "no_component": (
        '{"r": 4, "unet.r": 4}',
        "metadata lora_adapter_metadata: key 'r' does not start with a "
        "pipeline component (unet, transformer, text_encoder, text_encoder_2, text_encoder_3)",
    ),
    "nested": (
        '{"a": ' * 50_000 + "1" + "}" * 50_000,
        "metadata lora_adapter_metadata is not valid JSON (JSON nested too deeply)",
    ),
}


@pytest.mark.parametrize("case", DIFFUSERS_METADATA, ids=str)
def test_diffusers_metadata_is_validated(tmp_path, rng, capsys, case):
    """Validated like a PEFT config: a NaN alpha used to make `compress` exit 0 with NaN factors."""
    metadata, message = DIFFUSERS_METADATA[case]
    path = _diffusers_file(tmp_path, rng, metadata)
    assert _cli_error(capsys, ["audit", path]) == f"{path}: {message}"
    out = tmp_path / "out.safetensors"
    assert _cli_error(capsys, ["compress", path, "--rank", "2", "-o", out]) == f"{path}: {message}"
    assert not out.exists()


@pytest.mark.parametrize("alpha", [1e200, -1e39, 10**400])
def test_peft_alpha_out_of_range(tmp_path, rng, capsys, alpha):
    d = write_peft(tmp_path / "a", {"x": random_factors(rng, 4, 4, 4)}, config=peft_config(r=4))
    (d / C).write_text(json.dumps(peft_config(r=4, lora_alpha=alpha)))
    line = _cli_error(capsys, ["audit", d])
    assert line.startswith(f"{d / C}: {ALPHA}"), line
    (d / C).write_text(json.dumps(peft_config(r=4, alpha_pattern={"x": alpha})))
    line = _cli_error(capsys, ["compress", d, "--rank", "2", "-o", tmp_path / "o"])
    assert line.startswith(f"{d / C}: 'alpha_pattern' value for 'x' must be a finite number"), line


def test_peft_alpha_at_float32_limit_is_read(tmp_path, rng):
    d = write_peft(
        tmp_path / "a", {"x": random_factors(rng, 4, 4, 4)}, config=peft_config(r=4, lora_alpha=3e38)
    )
    assert load(d).info("x").scale == pytest.approx(0.75e38)


def test_kohya_alpha_out_of_range(tmp_path, rng, capsys):
    a, b = random_factors(rng, 4, 4, 2)
    path = tmp_path / "k.safetensors"
    t = {
        KEY: (a, "fp32"),
        "lora_unet_a.lora_up.weight": (b, "fp32"),
        "lora_unet_a.alpha": (np.array(1e300), "fp64"),
    }
    write_safetensors_raw(path, t)
    assert (
        _cli_error(capsys, ["audit", path])
        == f"{path}: layer lora_unet_a: lora_unet_a.alpha must be {RULE}, got 1e+300"
    )


# --- 4. pattern keys that would backtrack without bound -----------------------------------------

SAFE_KEYS = [
    r".*\.q_proj",
    r"model\.layers\.\d+\.self_attn\.v_proj",
    r"layers\.(0|1|2)\.self_attn\.q_proj",
    r"(q|k|v)_proj",
    r"^model\.layers\.0\.self_attn\.q_proj",
    r".*layers\.[0-9]+\.(self_attn|mlp)\.\w+_proj",
    r"(ab|ac)*x",  # the parser factors the prefix out: (a(b|c))*
    r"(\d|1)+",  # one-character alternatives become a class: [\d1]+
]
UNSAFE_KEYS = {
    "(a|a)*c": "repeats an alternation whose branches can match the same text (as in (a|a)*), which can "
    "backtrack exponentially",
    "(a+)+b": "nests a repeat inside a repeat (as in (a+)+), which can backtrack exponentially",
    "(.*a){20}": "nests a repeat inside a repeat (as in (a+)+), which can backtrack exponentially",
    "(?:.|x)*y": "repeats an alternation whose branches can match the same text (as in (a|a)*), which can "
    "backtrack exponentially",
    "(x|)*y": "repeats an alternation whose branches can match the same text (as in (a|a)*), which can "
    "backtrack exponentially",
    "(a)\\1": "uses a backreference, whose matching time is not bounded",
    ".*a.*a.*a.*a.*b": "has 5 unbounded repeats (*, +, {m,}); at most 4 are allowed, as matching time grows "
    "as a power of the module name's length with each one",
    "a" * (MAX_LENGTH + 1): f"is longer than {MAX_LENGTH} characters",
}


@pytest.mark.parametrize("key", SAFE_KEYS)
def test_usual_pattern_keys_are_safe(key):
    assert backtracking_risk(key) is None


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_pattern_keys_are_named(key):
    assert backtracking_risk(key) == UNSAFE_KEYS[key]


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_backtracking_pattern_key_fails_fast(tmp_path, rng, capsys, field):
    """`(a|a)*c` against "model.aaaa…" used to hang the audit (catastrophic backtracking)."""
    name = "model." + "a" * 40 + ".q"
    d = write_peft(tmp_path / "a", {name: random_factors(rng, 4, 4, 4)}, config=peft_config(r=4))
    cfg = peft_config(r=4, **{field: {"(a|a)*c": 2}})
    (d / C).write_text(json.dumps(cfg))
    start = time.perf_counter()
    line = _cli_error(capsys, ["audit", d])
    assert time.perf_counter() - start < 10
    assert line == f"{d / C}: pattern key '(a|a)*c' {UNSAFE_KEYS['(a|a)*c']}"


def test_usual_pattern_keys_still_resolve(tmp_path, rng):
    names = layer_names(3)
    layers = {n: random_factors(rng, 6, 5, 2 if ".1." in n else 4) for n in names}
    cfg = peft_config(
        r=4,
        lora_alpha=8,
        rank_pattern={r"model\.layers\.1\.self_attn\.\w+_proj": 2},
        alpha_pattern={r".*\.v_proj": 2},
    )
    a = load(write_peft(tmp_path / "a", layers, config=cfg))
    assert a.info("model.layers.1.self_attn.q_proj").rank == 2
    assert a.info("model.layers.0.self_attn.v_proj").scale == 0.5
    assert a.info("model.layers.0.self_attn.q_proj").scale == 2.0


# --- 5. a file truncated or changed while it is being read ------------------------------------


@pytest.mark.parametrize("dtype", ["fp16", "fp32", "bf16", "fp64"])
def test_truncated_while_reading(tmp_path, rng, dtype):
    """The file is cut short after the adapter was opened: one FormatError, not SIGBUS (the test
    runs in a child process, so a crash shows as a signal, not as a dead test run)."""
    layers = {n: random_factors(rng, 256, 256, 8) for n in layer_names(2)}  # tensors span pages
    d = write_peft(tmp_path / "a", layers, config=peft_config(r=8), dtype=dtype)
    script = textwrap.dedent(f"""
        import os
        from lorascope.audit import audit_adapter
        from lorascope.errors import FormatError
        from lorascope.formats import load
        a = load({str(d)!r})
        os.truncate({str(d / W)!r}, 4096)  # a memory-mapped read of what is gone would be SIGBUS
        try:
            audit_adapter(a)
        except FormatError as e:
            print(e)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert p.stdout.startswith(f"{d / W}: file changed or truncated while reading: tensor "), p.stdout
    assert p.stdout.count("\n") == 1


def test_rewritten_while_reading(tmp_path, rng):
    """Same size, new content: the modification time tells, the read is refused."""
    d = write_peft(tmp_path / "a", {"x": random_factors(rng, 8, 8, 2)}, config=peft_config(r=2))
    a = load(d)
    data = (d / W).read_bytes()
    st = os.stat(d / W)
    with open(d / W, "r+b") as f:  # same bytes, in place
        f.write(data)
    os.utime(d / W, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(
        FormatError,
        match=r"file changed or truncated while reading: tensor '.*x\.lora_A\.weight' got 64 of 64",
    ):
        a.delta("x")


@pytest.mark.parametrize("calls", ["preadv", "pread", "seek and read"])
def test_positional_reads_match_the_library(tmp_path, rng, monkeypatch, calls):
    """Every dtype reads back the exact values the safetensors library reads, with each of the
    system calls a platform may lack."""
    from safetensors.numpy import load_file

    if calls != "preadv":
        monkeypatch.delattr(os, "preadv", raising=False)
    if calls == "seek and read":
        monkeypatch.delattr(os, "pread")

    for dtype in ("fp16", "fp32", "fp64"):
        layers = {n: random_factors(rng, 7, 5, 3) for n in layer_names(2)}
        d = write_peft(tmp_path / dtype, layers, config=peft_config(r=3), dtype=dtype)
        want = load_file(str(d / W))
        a = load(d)
        for name in a.names:
            delta = a.delta(name)
            np.testing.assert_array_equal(delta.down, want[f"{PREFIX}{name}.lora_A.weight"])
            np.testing.assert_array_equal(delta.up, want[f"{PREFIX}{name}.lora_B.weight"])
            assert delta.down.dtype == want[f"{PREFIX}{name}.lora_A.weight"].dtype


# --- PyTorch .bin files and half layers ------------------------------------------------------------


def _bin_adapter(tmp_path: Path, state: dict) -> Path:
    torch = pytest.importorskip("torch")
    d = tmp_path / "bin"
    d.mkdir()
    (d / C).write_text(json.dumps(peft_config(r=4)))
    torch.save(state, d / "adapter_model.bin")
    return d


def test_bin_with_non_tensor_values_names_the_file_and_key(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    state = {f"{PREFIX}q.lora_A.weight": torch.ones(4, 8), f"{PREFIX}q.lora_B.weight": torch.ones(8, 4)}
    d = _bin_adapter(tmp_path, {**state, "step": 3})
    line = _cli_error(capsys, ["audit", d])
    assert line == f"{d / 'adapter_model.bin'}: state dict entry 'step' is not a tensor (it holds a int)"


class _Payload:
    """An object whose unpickling calls a function (harmless here: os.getcwd), as a hostile file would."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_bin_with_code_is_refused_without_advising_to_run_it(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    d = _bin_adapter(tmp_path, {f"{PREFIX}q.lora_A.weight": torch.ones(4, 8), "x": _Payload()})
    weights = d / "adapter_model.bin"
    line = _cli_error(capsys, ["audit", d])
    problem, hint = line.split(" (hint: ", 1)
    assert problem == (
        f"{weights}: the file holds Python code (a pickle that imports or calls functions), "
        "which lorascope will not run"
    )
    assert "Re-running" not in line and "will likely succeed" not in line
    assert hint.startswith("run this only if you trust the file and where it came from")
    # the snippet in the hint converts a trusted file (run here on a clean one: same tensors, no code)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / C).write_text(json.dumps(peft_config(r=4)))
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    torch.save({f"{PREFIX}q.lora_A.weight": a, f"{PREFIX}q.lora_B.weight": b}, clean / "adapter_model.bin")
    snippet = (
        hint.split('python -c "', 1)[1]
        .rsplit('"', 1)[0]
        .replace(str(weights), str(clean / "adapter_model.bin"))
    )
    snippet = snippet.replace(str(d / W), str(clean / W))
    subprocess.run([sys.executable, "-c", snippet], check=True, timeout=120)
    delta = load(clean).delta("q")
    np.testing.assert_array_equal(delta.down, a.numpy())
    np.testing.assert_array_equal(delta.up, b.numpy())


@pytest.mark.parametrize(("have", "missing"), [("A", "B"), ("B", "A")])
def test_half_embedding_layer_is_an_error(tmp_path, capsys, rng, have, missing):
    shape = (4, 50) if have == "A" else (50, 4)
    key = f"{PREFIX}emb.lora_embedding_{have}"
    d = write_peft(
        tmp_path / "a", {"q": random_factors(rng, 8, 6, 4)}, extra={key: (rng.standard_normal(shape), "fp32")}
    )
    for argv in (["audit", d], ["merge-audit", d, d]):
        line = _cli_error(capsys, argv)
        assert line == f"{d / W}: layer emb: {key} has no matching lora_embedding_{missing} tensor"
