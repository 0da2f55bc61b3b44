"""Bench config validation: typed sections, one-line errors naming the file and the key in the one
wording every user file gets; overrides; the config hash a resume compares.  No torch needed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lorascope.bench.config import (
    BenchConfig,
    CompressionSection,
    config_hash,
    load_config,
    parse_config,
    with_overrides,
)
from lorascope.cli.main import main
from lorascope.errors import AdapterNotFoundError, ConfigError, InputNotFoundError, InvalidArgumentError

# The hashes main computed (before the config became typed sections) for the shipped presets: a
# bench started by that version must still be resumable.
HASH_MINILM_RT = "304c1a0860739c2cd01a287e5600fda83e870429662b28e6d488f62556933005"
HASH_MINILM_RT_SMOKE = "1c5c0a3fb1d428a4918383224740bb87b1392fb5360d94ff9b6301be7a79fd4a"
HASH_MISTRAL_GSM8K = "ece3d136eaa712af79a3a9e355a40492c7ed4727f4766f0ef587961bfc00a421"
CONFIG_HINT = "give a YAML/JSON bench config (docs/bench.md), or --preset minilm-rt"


def write(tmp_path, doc, name="bench.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else doc)
    return path


BASE = {"model": {"name": "minilm"}, "task": {"source": "rotten_tomatoes"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"train": {"stpes": 10}}, "key train.stpes: unknown key; known keys: steps, lr, batch_size,"),
        (
            {"trian": {}},
            "key trian: unknown key; known keys: model, task, train, lora, compression, policy, seeds",
        ),
        ({"train": {"steps": 0}}, "key train.steps: must be an integer ≥ 1, got 0"),
        ({"train": {"lr": "fast"}}, "key train.lr: must be a number in (0, 1], got 'fast'"),
        ({"train": "fast"}, "key train: must be a mapping, got 'fast'"),
        (
            {"lora": {"target_modules": []}},
            "key lora.target_modules: must be a non-empty list of strings, got []",
        ),
        (
            {"compression": {"variants": ["uniform", "per_layer"]}},
            "key compression.variants: unknown variant 'uniform'; known: uniform_median,",
        ),
        (
            {"compression": {"rounding": "pow3"}},
            "key compression.rounding: must be 'none', 'pow2' or 'multiple:N', got 'pow3'",
        ),
        (
            {"compression": {"max_candidates": 0}},
            "key compression.max_candidates: must be an integer ≥ 1, got 0",
        ),
        ({"policy": {"pass_rate_min": 1.5}}, "key policy.pass_rate_min: must be a number in [0, 1], got 1.5"),
        ({"seeds": [1, 1]}, "key seeds: must be a non-empty list of distinct integers ≥ 0, got [1, 1]"),
        ({"task": {"source": "file"}}, "key task.path: source 'file' needs a CSV, JSONL or Parquet path"),
        (
            {"model": {"name": "minilm", "path": "/m"}},
            "key model: give exactly one of model.path (a local folder) or model.name",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, patch, message):
    doc = {**BASE, **patch}
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 2
    line = capsys.readouterr().err
    assert line.startswith(f"lorascope: error: {path}: {message}") and line.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_sections_are_typed_and_frozen(tmp_path):
    path = write(tmp_path, "model:\n  name: minilm\ntask:\n  source: file\n  path: data.csv\n", "b.yaml")
    cfg = load_config(path)
    assert isinstance(cfg, BenchConfig) and isinstance(cfg.compression, CompressionSection)
    assert cfg.task.path == str(tmp_path / "data.csv")  # relative to the config file
    assert dataclasses.asdict(cfg.policy) == {
        "pass_rate_min": 0.67,
        "worst_delta_min": -0.025,
        "tolerance": -0.025,
        "probe_min_accuracy": 0.7,
    }
    assert cfg.seeds == (42, 123, 456) and cfg.lora.alpha == 128.0 and cfg.train.steps == 300
    assert cfg.lora.target_modules == ("query", "key", "value")  # lists are frozen to tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 1  # type: ignore[misc]
    assert cfg.source == str(path)


def test_bad_yaml_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "model: [unclosed\n", "b.yaml")
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lorascope: error: {path}: not valid YAML") and err.count("\n") == 1


def test_non_utf8_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model:\n  path: \xff\xfe\n")
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"lorascope: error: {path}: not UTF-8 text (byte 15)\n"
    assert not (tmp_path / "o").exists()


def test_missing_config_has_a_bench_hint(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputNotFoundError) as err:
        load_config(missing)
    assert not isinstance(err.value, AdapterNotFoundError) and err.value.hint == CONFIG_HINT
    assert main(["bench", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert (
        capsys.readouterr().err
        == f"lorascope: error: {missing}: bench config not found (hint: {CONFIG_HINT})\n"
    )
    assert not (tmp_path / "o").exists()


def test_preset_rules_and_print_config_without_out(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.yaml"), "--preset", "minilm-rt", "--out", "o"]) == 2
    assert "give a CONFIG file or --preset, not both" in capsys.readouterr().err
    assert main(["bench", "--print-config"]) == 0  # the embedded default; no --out needed
    assert json.loads(capsys.readouterr().out)["task"]["source"] == "rotten_tomatoes"
    assert main(["bench", "--preset", "minilm-rt"]) == 2  # a run needs an output folder
    assert capsys.readouterr().err == (
        "lorascope: error: bench needs -o/--out DIR (a new folder, or the one to --resume)\n"
    )


def test_presets_validate_and_print(capsys):
    for name in ("minilm-rt", "mistral-gsm8k"):
        assert main(["bench", "--preset", name, "--print-config"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["lora"]["probe_r"] == 64
    cfg = load_config(None, preset="minilm-rt")
    assert cfg.seeds == (42, 123, 456) and cfg.task.source == "rotten_tomatoes"


def test_config_hash_is_unchanged_for_the_presets():
    rt = load_config(None, preset="minilm-rt")
    assert config_hash(rt) == HASH_MINILM_RT
    assert config_hash(with_overrides(rt, smoke=True)) == HASH_MINILM_RT_SMOKE
    assert config_hash(load_config(None, preset="mistral-gsm8k")) == HASH_MISTRAL_GSM8K


def test_overrides_and_hash():
    cfg = load_config(None, preset="minilm-rt")
    smoke = with_overrides(cfg, smoke=True, seeds=[1, 2])
    assert smoke.model.random_init and smoke.train.steps == 24 and smoke.seeds == (1, 2)
    assert smoke.lora.probe_r == 8 and smoke.lora.alpha == 16.0 and smoke.policy.probe_min_accuracy == 0.0
    assert cfg.train.steps == 120 and cfg.model.random_init is None  # the original is untouched
    assert config_hash(smoke) != config_hash(cfg)
    # seeds are not part of the hash: a bench can be resumed with more seeds
    assert config_hash(with_overrides(cfg, seeds=[7])) == config_hash(cfg)
    with pytest.raises(InvalidArgumentError, match="--seeds"):
        with_overrides(cfg, seeds=[1, 1])
    assert parse_config(BASE, "x").train.steps == 300
    assert with_overrides(cfg, max_candidates=2).compression.max_candidates == 2


def test_max_candidates_zero_is_refused(capsys):
    cfg = load_config(None, preset="minilm-rt")
    with pytest.raises(InvalidArgumentError) as err:
        with_overrides(cfg, max_candidates=0)
    assert str(err.value) == (
        "--max-candidates must be ≥ 1, got 0 "
        "(0 would retrain nothing; list fewer compression.variants instead)"
    )
    with pytest.raises(SystemExit) as code:
        main(["bench", "--preset", "minilm-rt", "--max-candidates", "0", "--print-config"])
    assert code.value.code == 2
    assert "--max-candidates must be ≥ 1, got 0" in capsys.readouterr().err


def test_output_option_spellings(tmp_path, capsys):
    from lorascope.cli.main import build_parser

    parser = build_parser("bench")
    for flag in ("-o", "--out", "--output", "--output-dir"):
        args = parser.parse_args(["bench", "--preset", "minilm-rt", flag, str(tmp_path / "d")])
        assert args.out == tmp_path / "d"
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "where models train and evaluate" in capsys.readouterr().out  # --device has help text


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    """ "~/data.csv" was kept as written (absolute after expanduser, so never made absolute), and
    the data reader then looked for a folder named "~"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    doc = {"model": {"path": "~/model"}, "task": {"source": "file", "path": "~/d.csv", "test_path": "t.csv"}}
    (tmp_path / "cfg").mkdir()
    cfg = load_config(write(tmp_path / "cfg", doc))
    assert cfg.model.path == str(tmp_path / "model")
    assert cfg.task.path == str(tmp_path / "d.csv")
    assert cfg.task.test_path == str((tmp_path / "cfg" / "t.csv").resolve())


@pytest.mark.parametrize("missing", ["torch"])  # peft would import torch: a torch-free file
def test_a_missing_training_package_is_one_line(tmp_path, capsys, monkeypatch, missing):
    """Without torch (or peft) the bench was an internal error (a bare ImportError)."""
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` fails
    assert main(["bench", "--preset", "minilm-rt", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert capsys.readouterr().err == (
        "lorascope: error: the bench trains models: it needs torch, transformers and peft "
        f"({missing} is missing): pip install 'lorascope[bench]'\n"
    )
    assert not (tmp_path / "o").exists()


def test_an_unreadable_stage_record_says_how_to_redo_the_stage(tmp_path):
    """A stage.json that is not one of ours (edited, truncated to {}) was an internal error on
    --resume (KeyError/TypeError in from_dict)."""
    from lorascope.bench.results import TrainedRecord
    from lorascope.bench.store import StageStore
    from lorascope.errors import FormatError

    (tmp_path / "probe").mkdir()
    for text in ("{}", "[1, 2]"):
        (tmp_path / "probe" / "stage.json").write_text(text)
        with pytest.raises(FormatError) as e:
            StageStore(tmp_path).record("probe", TrainedRecord)
        assert str(e.value) == f"{tmp_path / 'probe' / 'stage.json'}: not a stage record this bench wrote"
        assert e.value.hint == f"remove the folder {tmp_path / 'probe'} and --resume: the stage runs again"
