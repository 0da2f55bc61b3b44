"""Merge plans users hand `merge --plan`: every unreadable or wrongly typed plan is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import layer_names, peft_config, random_factors, write_peft

from lorascope.cli.main import main

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000


@pytest.fixture
def adapters(tmp_path, rng):
    layers = {n: random_factors(rng, 12, 10, 4) for n in layer_names(2)}
    return [str(write_peft(tmp_path / n, layers, config=peft_config(r=4))) for n in ("a", "b")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("plan.json", b'{"weights": [1, 1], "notes": ["\xff"]}', "not UTF-8 text (byte 31)"),
        ("plan.json", DEEP, "JSON nested too deeply"),
        (
            "plan.json",
            '{"weights": [' + HUGE + ", 1]}",
            "a JSON number has too many digits",
        ),
        (
            "plan.yaml",
            "weights: [" + HUGE + ", 1]\n",
            "a YAML number has too many digits",
        ),
        ("plan.yaml", "weights: " + "[" * 5000 + "]" * 5000, "YAML nested too deeply"),
        (
            "plan.json",
            '{"weights": [1, 1], "adapters": 5}',
            "key adapters: must be a list of strings",
        ),
        ("plan.json", '{"weights": [1, 1], "notes": [1]}', "key notes: must be a list of strings"),
        (
            "plan.json",
            '{"weights": [1, 1], "peft_add_weighted_adapter": [1]}',
            "key peft_add_weighted_adapter: must be a mapping",
        ),
        ("plan.json", '{"weights": [1, 1], "seed": -1}', "key seed: must be an integer ≥ 0, got -1"),
        (
            "plan.json",
            '{"weights": [1' + "0" * 400 + ", 1]}",
            "key weights: must hold finite numbers, got an integer of 1329 bits",
        ),
        (
            "plan.json",
            '{"weights": [1, 1], "layers": {"x": {"method": ["ties"]}}}',
            "key layers.x.method: ['ties'] is not one of",
        ),
        (
            "plan.json",
            '{"weights": [1, 1], "layers": {"x\\u001b[2J": {"method": "nope"}}}',
            r"key layers.x\x1b[2J.method: 'nope' is not one of",
        ),
    ],
)
def test_bad_plans_are_one_line_exit_2(tmp_path, capsys, adapters, name, content, message):
    plan = tmp_path / name
    plan.write_bytes(content if isinstance(content, bytes) else content.encode())
    code = main(["merge", *adapters, "--plan", str(plan), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"lorascope: error: {plan}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_good_plan_still_loads(tmp_path, capsys, adapters):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"weights": [1, 0.5], "adapters": adapters, "notes": ["n"], "seed": 3}))
    assert main(["merge", *adapters, "--plan", str(plan), "-o", str(tmp_path / "out")]) == 0
