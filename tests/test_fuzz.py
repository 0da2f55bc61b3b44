"""Generated hostile inputs for every command: no internal error, no hang, one line naming the file.

Each case builds a broken input from a valid one (seeded, so a failure reproduces), runs one
command in-process through the CLI entry point, and checks the contract every command keeps:

* the exit code is 0, 1 (a finding, e.g. `check`) or 2 (bad input), never 70 (internal error);
* a failure prints exactly one stderr line, `lorascope: error: ...`, and no traceback;
* when the input file is to blame, the line names it;
* the command finishes within `LIMIT_S` (an alarm turns a hang into a test failure).

Mutations: bit flips, truncation and random bytes over whole files; for safetensors headers,
replaced values of every field (deeply nested JSON, 5000-digit integers, wrong types, negative or
reversed offsets, rank 0, NaN/Inf/1e200 data); for adapter configs, merge plans and run logs,
the same value replacements plus non-UTF-8 bytes and escape sequences in names.  The whole suite
runs in well under a minute.
"""

from __future__ import annotations

import json
import random
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import PREFIX, layer_names, peft_config, random_factors, write_peft, write_safetensors_raw

from lorascope.cli.main import main

LIMIT_S = 20
HOSTILE_VALUES = [
    None,
    True,
    -1,
    0,
    2**70,
    "@BIGINT@",  # a 5000-digit integer in the JSON text
    1e308,
    float("nan"),
    "x",
    "\udc80\x1b[31m",
    [],
    [1],
    ["a", None],
    {},
    {"a": {"b": 1}},
]


def nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def dumps(value) -> str:
    """JSON text, NaN allowed, with the placeholders for a deeply nested value and a 5000-digit integer."""
    text = json.dumps(value, allow_nan=True).replace('"@NESTED@"', nested())
    return text.replace('"@BIGINT@"', "9" * 5000)


# ---- building blocks -------------------------------------------------------------------------


def good_peft(d: Path, rng: np.random.Generator) -> Path:
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(3)}
    return write_peft(d, layers, config=peft_config(r=4, lora_alpha=8))


def good_kohya(path: Path, rng: np.random.Generator) -> Path:
    tensors = {}
    for i in range(3):
        a, b = random_factors(rng, 12, 10, 4)
        name = f"lora_unet_down_blocks_0_attn{i}_to_q"
        tensors.update({f"{name}.lora_down.weight": (a, "fp16"), f"{name}.lora_up.weight": (b, "fp16")})
        tensors[f"{name}.alpha"] = (np.array(4.0), "fp32")
    write_safetensors_raw(path, tensors, metadata={"ss_network_dim": "4"})
    return path


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def with_header(path: Path, header_text: str, data: bytes) -> None:
    text = header_text.encode("utf-8", "surrogatepass")
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


# ---- mutations -------------------------------------------------------------------------------


def flip_bits(path: Path, r: random.Random) -> None:
    raw = bytearray(path.read_bytes())
    for _ in range(r.randint(1, 8)):
        i = r.randrange(len(raw))
        raw[i] ^= 1 << r.randrange(8)
    path.write_bytes(bytes(raw))


def truncate(path: Path, r: random.Random) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: r.randrange(len(raw))])


def random_bytes(path: Path, r: random.Random) -> None:
    path.write_bytes(bytes(r.randrange(256) for _ in range(r.randint(0, 600))))


def header_field(path: Path, r: random.Random) -> None:
    """One field of one tensor entry (or the metadata) replaced by a hostile value."""
    header, data = header_of(path)
    key = r.choice([k for k in header if k != "__metadata__"])
    field = r.choice(["dtype", "shape", "data_offsets", "__entry__", "__metadata__"])
    value = r.choice([*HOSTILE_VALUES, "@NESTED@"])
    if field == "__entry__":
        header[key] = value
    elif field == "__metadata__":
        header["__metadata__"] = value if r.random() < 0.5 else {"ss_network_dim": value}
    else:
        header[key][field] = value
    with_header(path, dumps(header), data)


def tensor_values(path: Path, r: random.Random) -> None:
    """Finite-but-huge, NaN, Inf or zero-rank data in one tensor (header kept consistent)."""
    header, data = header_of(path)
    key = r.choice([k for k in header if k != "__metadata__" and "alpha" not in k])
    entry = header[key]
    start, end = entry["data_offsets"]
    dtype = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}.get(entry["dtype"], "<f4")
    arr = np.frombuffer(data[start:end], dtype=dtype).copy()
    bad = r.choice([np.nan, np.inf, 1e200 if dtype == "<f8" else 6e4, 0.0])
    arr[r.randrange(arr.size)] = bad
    with_header(path, json.dumps(header), data[:start] + arr.tobytes() + data[end:])


def config_field(path: Path, r: random.Random) -> None:
    cfg = json.loads(path.read_text())
    field = r.choice(
        ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "peft_type", "use_rslora", "target_modules"]
    )
    value = r.choice([*HOSTILE_VALUES, "@NESTED@", {"(a|a)*c": 4}, {"a.*": "x"}, "LOHA", "IA3", ""])
    cfg[field] = value
    path.write_text(dumps(cfg))


def non_utf8(path: Path, r: random.Random) -> None:
    raw = path.read_bytes()
    i = r.randrange(max(1, len(raw)))
    path.write_bytes(raw[:i] + b"\xff\xfe\x80" + raw[i:])


# ---- the cases --------------------------------------------------------------------------------


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    def hang(signum, frame):
        raise TimeoutError(f"lorascope {' '.join(argv)} took more than {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(LIMIT_S)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def check_contract(code: int, err: list[str], blamed: str | None) -> None:
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("lorascope: error:"), err
        assert "Traceback" not in err[0] and "internal error" not in err[0], err
        if blamed is not None:
            assert blamed in err[0], (blamed, err)


FILE_MUTATIONS = {"flip": flip_bits, "truncate": truncate, "bytes": random_bytes}
SAFETENSORS_MUTATIONS = {**FILE_MUTATIONS, "header": header_field, "values": tensor_values}
SEEDS = range(6)


def weights_argv(command: str, bad: Path, other: Path, tmp_path: Path) -> list[str]:
    """The command line that reads the broken adapter `bad` (beside a good `other` where two are needed)."""
    return {
        "audit": ["audit", str(bad), "--json", "-q"],
        "compress": ["compress", str(bad), "-o", str(tmp_path / "out"), "--rank", "2"],
        "convert": ["convert", str(bad), str(tmp_path / "out.safetensors"), "--to", "kohya"],
        "merge-audit": ["merge-audit", str(other), str(bad), "--json", "-q"],
        "merge": ["merge", str(other), str(bad), "-o", str(tmp_path / "out"), "-q"],
    }[command]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", list(SAFETENSORS_MUTATIONS))
@pytest.mark.parametrize("command", ["audit", "compress", "convert", "merge-audit", "merge"])
def test_peft_weights(tmp_path, capsys, command, mutation, seed):
    r = random.Random(f"{command}-{mutation}-{seed}")
    rng = np.random.default_rng(seed)
    bad, other = good_peft(tmp_path / "bad", rng), good_peft(tmp_path / "other", rng)
    SAFETENSORS_MUTATIONS[mutation](bad / "adapter_model.safetensors", r)
    check_contract(*run(weights_argv(command, bad, other, tmp_path), capsys), blamed="bad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("command", ["audit", "compress", "convert", "merge-audit", "merge"])
def test_peft_fp64_values(tmp_path, capsys, command, seed):
    """float64 factors holding 1e200 (finite: exact, or σ₁ beyond the energy limit), NaN, Inf or 0."""
    r = random.Random(f"{command}-f64-{seed}")
    rng = np.random.default_rng(seed)
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(3)}
    bad = write_peft(tmp_path / "bad", layers, dtype="fp64", config=peft_config(r=4, lora_alpha=8))
    other = good_peft(tmp_path / "other", rng)
    tensor_values(bad / "adapter_model.safetensors", r)
    check_contract(*run(weights_argv(command, bad, other, tmp_path), capsys), blamed="bad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", ["config", "non-utf8", "flip", "truncate"])
@pytest.mark.parametrize("command", ["audit", "check"])
def test_peft_config(tmp_path, capsys, command, mutation, seed):
    r = random.Random(f"{command}-{mutation}-{seed}")
    bad = good_peft(tmp_path / "bad", np.random.default_rng(seed))
    mutate = {"config": config_field, "non-utf8": non_utf8, **FILE_MUTATIONS}[mutation]
    mutate(bad / "adapter_config.json", r)
    argv = (
        ["audit", str(bad), "--json", "-q"]
        if command == "audit"
        else ["check", str(bad / "adapter_config.json")]
    )
    check_contract(*run(argv, capsys), blamed="bad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", list(SAFETENSORS_MUTATIONS))
def test_kohya_file(tmp_path, capsys, mutation, seed):
    r = random.Random(f"kohya-{mutation}-{seed}")
    bad = good_kohya(tmp_path / "bad.safetensors", np.random.default_rng(seed))
    SAFETENSORS_MUTATIONS[mutation](bad, r)
    check_contract(*run(["audit", str(bad), "-q"], capsys), blamed="bad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", ["field", "non-utf8", "flip", "truncate", "bytes"])
def test_merge_plan(tmp_path, capsys, mutation, seed):
    r = random.Random(f"plan-{mutation}-{seed}")
    rng = np.random.default_rng(seed)
    a, b = good_peft(tmp_path / "a", rng), good_peft(tmp_path / "b", rng)
    plan = tmp_path / "bad-plan.json"
    assert main(["merge-audit", str(a), str(b), "--plan", str(plan), "-q"]) == 0
    capsys.readouterr()
    if mutation == "field":
        data = json.loads(plan.read_text())
        key = r.choice(["weights", "seed", "default", "layers", "schema", "fingerprints"])
        data[key] = r.choice([*HOSTILE_VALUES, "@NESTED@", {"method": r.choice(HOSTILE_VALUES)}])
        plan.write_text(dumps(data))
    else:
        {"non-utf8": non_utf8, **FILE_MUTATIONS}[mutation](plan, r)
    argv = ["merge", str(a), str(b), "--plan", str(plan), "-o", str(tmp_path / "out"), "-q"]
    check_contract(*run(argv, capsys), blamed="bad-plan")


def good_log(path: Path) -> Path:
    from lorascope.telemetry import RunWriter

    with RunWriter(path, run_id="r1") as w:
        w.write("run_start", config={"model_name": "m"}, meta={})
        for step in range(1, 30):
            w.write("train_step", step=step, loss=2.0 / step, lr=1e-4)
            if step % 10 == 0:
                w.write("eval", step=step, split="test", metrics={"loss": 1.0 / step, "accuracy": 0.5})
        w.write("run_end", status="ok")
    return path


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mutation", ["field", "non-utf8", "flip", "truncate", "bytes"])
def test_run_log(tmp_path, capsys, mutation, seed):
    r = random.Random(f"log-{mutation}-{seed}")
    log = good_log(tmp_path / "bad-run.jsonl")
    if mutation == "field":
        lines = log.read_text().splitlines()
        i = r.randrange(len(lines))
        rec = json.loads(lines[i])
        rec[r.choice(list(rec))] = r.choice([*HOSTILE_VALUES, "@NESTED@"])
        lines[i] = dumps(rec)
        log.write_text("\n".join(lines) + "\n")
    else:
        {"non-utf8": non_utf8, **FILE_MUTATIONS}[mutation](log, r)
    for argv in (["monitor", str(log)], ["monitor", str(log), "--json"]):
        code, err = run(argv, capsys)
        check_contract(code, err, blamed="bad-run")
        capsys.readouterr()


def test_escape_sequences_never_reach_the_terminal(tmp_path, capsys):
    """A layer name with ESC / CSI bytes is shown escaped in text output, exactly in JSON."""
    rng = np.random.default_rng(0)
    name = "model.layers.0.\x1b[2Jq_proj"
    a, b = random_factors(rng, 12, 10, 4)
    d = write_peft(tmp_path / "esc", {name: (a, b)}, config=peft_config(r=4))
    assert main(["audit", str(d), "--layers", "-q"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert main(["audit", str(d), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["name"] == name


@pytest.mark.torch
def test_prefix_is_the_one_peft_writes(tmp_path):
    """The fixtures' key prefix is what PEFT itself saves (a tiny model through the real library)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from safetensors import safe_open

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(6, 4)

        def forward(self, x):
            return self.q_proj(x)

    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "np") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(PREFIX) for k in keys), keys
