"""Text and Markdown views: utilisation as a percentage, every threshold's k, and Markdown honouring
--top-wasteful, --layers and --suggest-per-layer like the text view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import strict_json

from lorascope.audit.render import pct
from lorascope.cli.main import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minilm-rt-r64"


def run(capsys, *argv) -> str:
    code = main(["audit", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0213, "2.1 %"),
        (0.0031, "0.31 %"),
        (0.000012, "0.0012 %"),
        (0.0, "0.0 %"),
        (1.0, "100.0 %"),
        (0.5, "50.0 %"),
    ],
)
def test_pct(x, text):
    assert pct(x) == text


def test_utilisation_is_a_percentage_in_text_and_markdown_and_a_fraction_in_json(capsys):
    d = strict_json(run(capsys, EXAMPLE, "--json", "--no-singular-values"))
    u = d["summary"]["utilisation"]
    assert 0.0 < u["median"] < 0.05  # a fraction
    text = run(capsys, EXAMPLE)
    row = next(line for line in text.splitlines() if line.strip().startswith("utilisation"))
    cells = [c.strip() for c in row.split("utilisation", 1)[1].split("  ") if c.strip()]
    assert cells == [pct(u["mean"]), pct(u["median"]), pct(u["p90"])]
    assert pct(u["median"]) == "2.1 %"
    md = run(capsys, EXAMPLE, "--markdown")
    assert f"| utilisation | {pct(u['mean'])} | {pct(u['median'])} | {pct(u['p90'])} |" in md
    worst = min(d["layers"], key=lambda x: x["utilisation"])
    assert f"| {pct(worst['utilisation'])} |" in md  # the layer table too


def test_every_threshold_is_shown(small_adapter, capsys):
    path, _ = small_adapter
    args = (path, "--threshold", "0.8", "--threshold", "0.95", "--threshold", "0.99", "--layers")
    for out in (run(capsys, *args), run(capsys, *args, "--markdown")):
        for tau in ("0.8", "0.95", "0.99"):
            assert f"energy_rank@{tau}" in out and f"k@{tau}" in out


def test_markdown_honours_top_wasteful_layers_and_per_layer(small_adapter, capsys):
    path, _ = small_adapter
    d = strict_json(run(capsys, path, "--json"))
    md = run(capsys, path, "--markdown", "--top-wasteful", 3, "--suggest-per-layer")
    assert "## 3 least-utilised layers" in md and "## Layers" not in md
    section = md.split("## 3 least-utilised layers", 1)[1].split("##", 1)[0]
    assert section.count("| model.layers.") == 3
    block = md.split("## PEFT config for the per-layer suggestion\n\n```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == d["suggestions"]["peft_config"]
    both = run(capsys, path, "--markdown", "--top-wasteful", 2, "--layers")
    assert "## 2 least-utilised layers" in both and "## Layers" in both and "PEFT config" not in both
    assert "## Layers" in run(capsys, path, "--markdown")  # a Markdown report lists every layer by default


def test_markdown_and_text_show_the_same_sections(small_adapter, capsys):
    path, _ = small_adapter
    text = run(capsys, path, "--policies", "energy,knee")
    md = run(capsys, path, "--markdown", "--policies", "energy,knee")
    for title in ("by module type", "energy share ‖ΔW‖_F² by block", "rank policies"):
        assert f"  {title}" in text
        assert f"## {title[0].upper()}{title[1:]}" in md
