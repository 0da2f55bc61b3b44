"""`lorascope check`: findings per rule, exit codes, JSON output, no unpickling."""

from __future__ import annotations

import json

import pytest

from lorascope.check import CheckInput, check_config
from lorascope.cli.main import main


def codes(lora, training=None, **kw):
    return {
        f.code
        for f in check_config(
            CheckInput(lora, {"learning_rate": 2e-4} if training is None else training, **kw)
        )
    }


GOOD = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "up_proj"], "lora_dropout": 0.05}


def test_good_config_has_no_findings():
    assert codes(GOOD) == set()


@pytest.mark.parametrize(
    ("change", "training", "kw", "code"),
    [
        ({"r": 0}, None, {}, "BAD_RANK"),
        ({"r": 64}, None, {"dataset_size": 500}, "RANK_VS_DATA"),
        ({"r": 32, "lora_alpha": 64}, None, {"task_profile": "easy_classification"}, "RANK_VS_TASK"),
        ({"lora_alpha": 64}, None, {}, "SCALE_HIGH"),
        ({"lora_alpha": 1}, None, {}, "SCALE_LOW"),
        ({"r": 64, "lora_alpha": 128}, None, {}, "CONSIDER_RSLORA"),
        ({}, {"learning_rate": 0.05}, {}, "LR_TOO_HIGH"),
        ({}, {"learning_rate": 3e-3}, {}, "LR_HIGH"),
        ({}, {}, {}, "LR_UNKNOWN"),
        ({"target_modules": ["query", "value"]}, None, {}, "ATTENTION_ONLY"),
        ({"lora_dropout": 0.5}, None, {}, "DROPOUT_HIGH"),
        ({}, {"learning_rate": 1e-4, "weight_decay": 0.3}, {}, "WEIGHT_DECAY_HIGH"),
    ],
)
def test_each_rule_fires(change, training, kw, code):
    assert code in codes({**GOOD, **change}, training, **kw)


def test_rslora_scale_and_bert_mlp_targets():
    assert "SCALE_HIGH" not in codes({**GOOD, "r": 64, "lora_alpha": 16, "use_rslora": True})  # 16/8 = 2
    assert "CONSIDER_RSLORA" not in codes({**GOOD, "r": 64, "lora_alpha": 16, "use_rslora": True})
    assert "ATTENTION_ONLY" not in codes({**GOOD, "target_modules": ["query", "value", "intermediate.dense"]})


def test_cli_exit_codes_and_json(tmp_path, capsys):
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps(GOOD))
    assert main(["check", str(tmp_path), "--lr", "2e-4"]) == 0
    capsys.readouterr()
    assert main(["check", str(cfg), "--lr", "0.5", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "lorascope.check/v1"
    assert {"severity": "error", "code": "LR_TOO_HIGH"}.items() <= out["findings"][0].items()
    args = tmp_path / "args.yaml"
    args.write_text("learning_rate: 3.0e-3\nweight_decay: 0.0\n")
    assert main(["check", str(cfg), "--training-args", str(args)]) == 0
    assert "LR_HIGH" in capsys.readouterr().out


def test_training_args_bin_is_refused_not_unpickled(tmp_path, capsys):
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps(GOOD))
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04not really")
    assert main(["check", str(cfg), "--training-args", str(tmp_path / "training_args.bin")]) == 2
    assert "torch pickle and is not unpickled" in capsys.readouterr().err
