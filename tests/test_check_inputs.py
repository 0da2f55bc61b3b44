"""`lorascope check` on what users actually hand it: configs the PEFT reader refuses, YAML numbers,
unreadable files, Gradience's flags and training directories.  Exit 1 = error findings, 2 = unreadable."""

from __future__ import annotations

import json

import pytest

from lorascope.check import CheckInput, check_config
from lorascope.check.inputs import resolve_task
from lorascope.cli.main import main
from lorascope.errors import LorascopeError
from lorascope.formats.peft import load_config

GOOD = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "up_proj"]}


def run_check(capsys, *argv):
    code = main(["check", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def finding_lines(out):
    return [line.split()[:2] for line in out.splitlines()]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"r": True}, "BAD_RANK"),
        ({"r": "8"}, "BAD_RANK"),
        ({"lora_alpha": "NaN"}, "BAD_ALPHA"),  # written below as a bare NaN literal
        ({"lora_alpha": True}, "BAD_ALPHA"),
        ({"rank_pattern": {"q_proj": "4"}}, "BAD_CONFIG"),
        ({"rank_pattern": {"q_proj": True}}, "BAD_CONFIG"),
        ({"alpha_pattern": ["q_proj"]}, "BAD_CONFIG"),
        ({"rank_pattern": {"(": 4}}, "BAD_PATTERN"),
        ({"alpha_pattern": {"[a-": 4}}, "BAD_PATTERN"),
        ({"peft_type": "LOHA"}, "NOT_LORA"),
        ({"peft_type": "IA3"}, "NOT_LORA"),
        ({"peft_type": "ADALORA"}, "NOT_LORA"),
        ({"peft_type": ""}, "NOT_LORA"),
    ],
)
def test_configs_the_reader_refuses_are_error_findings(tmp_path, capsys, change, code):
    text = json.dumps({**GOOD, **change}).replace('"NaN"', "NaN")
    cfg = write(tmp_path, "adapter_config.json", text)
    if code != "BAD_PATTERN":  # the reader compiles a regex key only when a module reaches it
        with pytest.raises(LorascopeError):
            load_config(cfg)
    rc, out, err = run_check(capsys, cfg, "--lr", "1e-4")
    assert rc == 1 and err == ""
    assert ["ERROR", code] in finding_lines(out)


def test_reader_message_names_the_file_and_is_not_repeated(tmp_path, capsys):
    cfg = write(tmp_path, "adapter_config.json", json.dumps({**GOOD, "rank_pattern": {"x": "a"}}))
    rc, out, _ = run_check(capsys, cfg, "--lr", "1e-4")
    assert rc == 1
    assert out == (
        f"ERROR    BAD_CONFIG         {cfg}: 'rank_pattern' value for 'x' must be a positive integer, "
        "got 'a': lorascope's PEFT reader (audit, compress, merge) refuses it\n"
    )
    # r = 0: the reader's own line would only repeat BAD_RANK
    write(tmp_path, "adapter_config.json", json.dumps({**GOOD, "r": 0}))
    rc, out, _ = run_check(capsys, cfg, "--lr", "1e-4")
    assert rc == 1 and [c for _, c in finding_lines(out)] == ["BAD_RANK"]
    # a negative alpha (the reader reads it) does not hide the reader's pattern complaint
    write(tmp_path, "adapter_config.json", json.dumps({**GOOD, "lora_alpha": -1, "rank_pattern": {"x": 0}}))
    rc, out, _ = run_check(capsys, cfg, "--lr", "1e-4")
    assert [c for _, c in finding_lines(out)] == ["BAD_CONFIG", "BAD_ALPHA"]


def test_negative_alpha_is_reported_even_when_r_is_bad():
    found = check_config(CheckInput({"r": 0, "lora_alpha": -4}, {"learning_rate": 1e-4}))
    assert {"BAD_RANK", "BAD_ALPHA"} <= {f.code for f in found}


def test_missing_r_and_alpha_take_peft_defaults_as_the_reader_does():
    found = check_config(CheckInput({"target_modules": ["q_proj", "up_proj"]}, {"learning_rate": 1e-4}))
    assert [(f.code, f.message) for f in found] == [("PEFT_DEFAULTS", "r and lora_alpha not set")]


def test_yaml_learning_rate_written_without_a_dot(tmp_path, capsys):
    cfg = write(tmp_path, "adapter_config.json", json.dumps(GOOD))
    args = write(tmp_path, "args.yaml", "learning_rate: 1e-4\nweight_decay: 1e-2\n")
    rc, out, _ = run_check(capsys, cfg, "--training-args", args)
    assert (rc, out) == (0, "no findings\n")
    write(tmp_path, "args.yaml", "learning_rate: 5e-2\n")
    rc, out, _ = run_check(capsys, cfg, "--training-args", args)
    assert rc == 1 and out.startswith("ERROR    LR_TOO_HIGH        learning_rate = 0.05:")
    write(tmp_path, "args.yaml", "learning_rate: fast\nweight_decay: lots\n")
    rc, out, _ = run_check(capsys, cfg, "--training-args", args)
    assert [c for _, c in finding_lines(out)] == ["BAD_LR", "BAD_WEIGHT_DECAY"]


@pytest.mark.parametrize(
    ("lora", "code"),
    [
        ({"lora_dropout": "abc"}, "BAD_DROPOUT"),
        ({"lora_dropout": [0.1]}, "BAD_DROPOUT"),
        ({"target_modules": 5}, "BAD_TARGETS"),
        ({"target_modules": {"q_proj": 1}}, "BAD_TARGETS"),
        ({"target_modules": ["q_proj", 3]}, "BAD_TARGETS"),
        ({"use_rslora": "false"}, "RSLORA_NOT_BOOL"),
    ],
)
def test_wrong_typed_fields_are_findings_not_crashes(tmp_path, capsys, lora, code):
    cfg = write(tmp_path, "adapter_config.json", json.dumps({**GOOD, **lora}))
    rc, out, err = run_check(capsys, cfg, "--lr", "1e-4")
    assert err == "" and code in [c for _, c in finding_lines(out)]
    assert rc == (0 if code == "RSLORA_NOT_BOOL" else 1)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("adapter_config.json", b'{"r": 8, "x": "\xff"}', "not UTF-8 text (byte 15)"),
        ("adapter_config.json", "[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ("adapter_config.json", '{"r": ' + "9" * 5000 + "}", "a JSON number has too many digits"),
        ("adapter_config.json", "[1, 2]", "config file: expected a mapping at the top level"),
        ("adapter_config.json", '{"r": ', "malformed JSON at line 1 column 7: Expecting value"),
        ("adapter_config.yaml", "r: " + "9" * 5000 + "\n", "a YAML number has too many digits"),
        ("adapter_config.yaml", "a: [" * 5000 + "]" * 5000, "YAML nested too deeply"),
    ],
)
def test_unreadable_config_is_one_line_exit_2(tmp_path, capsys, name, content, message):
    cfg = write(tmp_path, name, content)
    rc, out, err = run_check(capsys, cfg)
    assert rc == 2 and out == ""
    assert err.startswith(f"lorascope: error: {cfg}: {message}") and err.count("\n") == 1


def test_unreadable_training_args_is_one_line_exit_2(tmp_path, capsys):
    cfg = write(tmp_path, "adapter_config.json", json.dumps(GOOD))
    args = write(tmp_path, "args.json", b"\x80\x81")
    rc, _, err = run_check(capsys, cfg, "--training", args)
    assert rc == 2 and err == f"lorascope: error: {args}: not UTF-8 text (byte 0)\n"


# --- Gradience's spellings -------------------------------------------------------------------


def test_resolve_task():
    assert resolve_task("sst2") == ("easy_classification", True)
    assert resolve_task("glue/MNLI") == ("easy_classification", True)
    assert resolve_task("gsm8k") == ("hard_reasoning", True)
    assert resolve_task("alpaca") == ("generation", True)
    assert resolve_task("generation") == ("generation", True)
    assert resolve_task("my_data") == ("unknown", False)


def test_gradience_command_line(tmp_path, capsys):
    peft_dir = tmp_path / "peft_out"
    peft_dir.mkdir()
    write(peft_dir, "adapter_config.json", json.dumps({**GOOD, "r": 32, "lora_alpha": 64}))
    train_dir = tmp_path / "trainer_out"
    train_dir.mkdir()
    write(train_dir, "training_args.json", json.dumps({"learning_rate": 2e-4, "weight_decay": 0.0}))
    write(train_dir, "training_args.bin", b"\x80\x04never unpickled")
    rc, out, err = run_check(capsys, "--task", "sst2", "--peft-dir", peft_dir, "--training-dir", train_dir)
    assert (rc, err) == (0, "")
    assert out == (
        "INFO     RANK_VS_TASK       r = 32 for an easy classification task: classification adapters "
        "typically reach full accuracy at r ≤ 8; audit afterwards\n"
    )
    rc, out, _ = run_check(
        capsys, "--peft-dir", peft_dir, "--training-dir", train_dir, "--r", "4", "--alpha", "64",
        "--targets", "query,value", "key", "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert doc["task_profile"] == "unknown"
    assert [(f["code"], f["message"]) for f in doc["findings"]] == [
        ("SCALE_HIGH", "alpha/r = 16"),
        ("ATTENTION_ONLY", "only attention modules targeted (query, value, key)"),
    ]


def test_training_dir_with_trainer_state_only(tmp_path, capsys):
    cfg = write(tmp_path, "adapter_config.json", json.dumps(GOOD))
    run = tmp_path / "run"
    (run / "checkpoint-50").mkdir(parents=True)
    (run / "checkpoint-100").mkdir()
    state = {"log_history": [{"learning_rate": 1e-3, "step": 10}, {"learning_rate": 4e-3}, {"loss": 1.0}]}
    write(run / "checkpoint-100", "trainer_state.json", json.dumps(state))
    write(run / "checkpoint-50", "trainer_state.json", json.dumps({"log_history": []}))
    rc, out, _ = run_check(capsys, cfg, "--training-dir", run)
    assert rc == 0
    assert out == (
        "WARNING  LR_HIGH            learning_rate = 0.004 (peak logged in "
        "checkpoint-100/trainer_state.json): typical LoRA range is 5e-5 – 1e-3\n"
    )


def test_training_dir_without_readable_args(tmp_path, capsys):
    cfg = write(tmp_path, "adapter_config.json", json.dumps(GOOD))
    run = tmp_path / "run"
    run.mkdir()
    write(run, "training_args.bin", b"\x80\x04never unpickled")
    rc, out, err = run_check(capsys, cfg, "--training-dir", run)
    assert rc == 2 and out == ""
    assert err == (
        f"lorascope: error: {run}: no training_args.json, training_args.yaml, training_args.yml or "
        "trainer_state.json (training_args.bin is a torch pickle and is not unpickled); save "
        "args.to_json_string() as training_args.json\n"
    )


def test_unknown_task_name_is_an_info_finding(tmp_path, capsys):
    rc, out, _ = run_check(capsys, "--r", "8", "--alpha", "16", "--targets", "q_proj", "up_proj", "--lr",
                           "1e-4", "--task", "my_data")  # fmt: skip
    assert rc == 0
    assert out == (
        "INFO     TASK_UNKNOWN       task 'my_data' maps to no task profile: task-dependent rules were "
        "skipped; pass --task-profile easy_classification|hard_reasoning|generation\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "check needs an adapter config (CONFIG, --peft or --peft-dir) or --r"),
        (["{cfg}", "--peft", "other.json"], "CONFIG and --peft both name the adapter config; give one"),
        (["{cfg}", "--training-args", "a.json", "--training-dir", "."],
         "--training-args and --training-dir both name the training args; give one"),
        (["{cfg}", "--task", "generation", "--task-profile", "hard_reasoning"],
         "--task generation and --task-profile hard_reasoning disagree"),
        (["{cfg}", "--dataset-size", "-1"], "--dataset-size must be ≥ 0"),
    ],
)  # fmt: skip
def test_conflicting_flags_are_refused(tmp_path, capsys, argv, message):
    cfg = write(tmp_path, "adapter_config.json", json.dumps(GOOD))
    rc, out, err = run_check(capsys, *[a.format(cfg=cfg) for a in argv])
    assert (rc, out, err) == (2, "", f"lorascope: error: {message}\n")


def test_text_output_escapes_control_characters(tmp_path, capsys):
    names = ["q_proj\x1b[2J", "k_proj\udc80", "v_proj\u202e"]
    cfg = write(tmp_path, "adapter_config.json", json.dumps({**GOOD, "target_modules": names}))
    rc, out, _ = run_check(capsys, cfg, "--lr", "1e-4")
    assert rc == 0
    assert out.startswith(
        r"INFO     ATTENTION_ONLY     only attention modules targeted "
        r"(q_proj\x1b[2J, k_proj\udc80, v_proj\u202e)"
    )
    out.encode("utf-8")  # printable: no lone surrogate left
    assert main(["check", str(cfg), "--lr", "1e-4", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert names[0] in doc["findings"][0]["message"]  # JSON stays exact
