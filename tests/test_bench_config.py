"""Bench config validation: one-line errors naming the file and the key; no torch needed."""

from __future__ import annotations

import json

import pytest

from lorascope.bench.config import config_hash, load_config, validate, with_overrides
from lorascope.cli.main import main
from lorascope.errors import InvalidArgumentError


def write(tmp_path, doc, name="bench.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else doc)
    return path


BASE = {"model": {"name": "minilm"}, "task": {"source": "rotten_tomatoes"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"train": {"stpes": 10}}, "key train.stpes: unknown key; known keys: steps, lr,"),
        ({"trian": {}}, "key trian: unknown section"),
        ({"train": {"steps": 0}}, "key train.steps: must be an integer ≥ 1, got 0"),
        ({"train": {"lr": "fast"}}, "key train.lr: must be a number in (0, 1], got 'fast'"),
        ({"lora": {"target_modules": []}}, "key lora.target_modules: must be a non-empty list of strings"),
        ({"compression": {"variants": ["uniform", "per_layer"]}}, "unknown variant 'uniform'"),
        (
            {"compression": {"rounding": "pow3"}},
            "key compression.rounding: must be 'none', 'pow2' or 'multiple:N'",
        ),
        ({"policy": {"pass_rate_min": 1.5}}, "key policy.pass_rate_min: must be a number in [0, 1]"),
        ({"seeds": [1, 1]}, "key seeds: must be a non-empty list of distinct integers"),
        ({"task": {"source": "file"}}, "key task.path: source 'file' needs a CSV, JSONL or Parquet path"),
        ({"model": {"name": "minilm", "path": "/m"}}, "key model: give exactly one of model.path"),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, patch, message):
    doc = {**BASE, **patch}
    path = write(tmp_path, doc)
    with pytest.raises(InvalidArgumentError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err
    assert line.startswith("lorascope: error: ") and message in line and line.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_yaml_and_defaults(tmp_path):
    path = write(tmp_path, "model:\n  name: minilm\ntask:\n  source: file\n  path: data.csv\n", "b.yaml")
    cfg = load_config(path)
    assert cfg["task"]["path"] == str(tmp_path / "data.csv")  # relative to the config file
    assert cfg["policy"] == {
        "pass_rate_min": 0.67,
        "worst_delta_min": -0.025,
        "tolerance": -0.025,
        "probe_min_accuracy": 0.7,
    }
    assert cfg.seeds == [42, 123, 456] and cfg["lora"]["alpha"] == 128.0


def test_bad_yaml_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "model: [unclosed\n", "b.yaml")
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lorascope: error: {path}: not valid YAML/JSON") and err.count("\n") == 1


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model:\n  path: \xff\xfe\n")
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"lorascope: error: {path}: not UTF-8 text (byte 15)\n"
    assert not (tmp_path / "o").exists()


def test_missing_config_and_preset_rules(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nope.yaml"), "--preset", "minilm-rt", "--out", "o"]) == 2
    assert "give a CONFIG file or --preset, not both" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "o"), "--print-config"]) == 0  # the embedded default
    assert json.loads(capsys.readouterr().out)["task"]["source"] == "rotten_tomatoes"


def test_presets_validate_and_print(capsys):
    for name in ("minilm-rt", "mistral-gsm8k"):
        assert main(["bench", "--preset", name, "--out", "unused", "--print-config"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["lora"]["probe_r"] == 64
    cfg = load_config(None, preset="minilm-rt")
    assert cfg.seeds == [42, 123, 456] and cfg["task"]["source"] == "rotten_tomatoes"


def test_overrides_and_hash():
    cfg = load_config(None, preset="minilm-rt")
    smoke = with_overrides(cfg, smoke=True, seeds=[1, 2])
    assert smoke["model"]["random_init"] and smoke["train"]["steps"] == 24 and smoke.seeds == [1, 2]
    assert config_hash(smoke.raw) != config_hash(cfg.raw)
    # seeds are not part of the hash: a bench can be resumed with more seeds
    assert config_hash(with_overrides(cfg, seeds=[7]).raw) == config_hash(cfg.raw)
    with pytest.raises(InvalidArgumentError, match="--seeds"):
        with_overrides(cfg, seeds=[1, 1])
    assert validate(BASE, "x")["train"]["steps"] == 300
