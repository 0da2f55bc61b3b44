"""Every option acts or is refused with one line: combinations that used to be ignored silently,
Gradience's merge-audit spellings and report files, control characters in merge/merge-audit output."""

from __future__ import annotations

import json

import pytest
from conftest import layer_names, peft_config, random_factors, strict_json, write_peft

from lorascope.cli.main import main
from lorascope.telemetry import RunWriter


@pytest.fixture
def pair(tmp_path, rng):
    names = layer_names(2)
    la = {n: random_factors(rng, 24, 20, 4) for n in names}
    lb = {n: random_factors(rng, 24, 20, 4) for n in names}
    a = write_peft(tmp_path / "a", la, config=peft_config(r=4))
    b = write_peft(tmp_path / "b", lb, config=peft_config(r=4))
    return str(a), str(b)


def run_cli(capsys, *argv):
    code = main([str(x) for x in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--rank", "4"],
            "--rank does not apply to --method linear (it does to svd, ties, dare_ties, "
            "dare_linear, magnitude_prune)",
        ),
        (["--method", "linear", "--energy", "0.9"], "--energy does not apply to --method linear"),
        (
            ["--density", "0.5"],
            "--density does not apply to --method linear (it does to ties, dare_ties, "
            "dare_linear, magnitude_prune)",
        ),
        (["--method", "svd", "--density", "0.5"], "--density does not apply to --method svd"),
        (
            ["--method", "dare_linear", "--majority", "frequency"],
            "--majority does not apply to --method dare_linear (it does to ties, dare_ties)",
        ),
        (
            ["--method", "svd", "--seed", "3"],
            "--seed does not apply to --method svd (it does to ties, "
            "dare_ties, dare_linear, magnitude_prune)",
        ),
        (["--method", "svd", "--rank", "4", "--energy", "0.9"], "give --rank or --energy, not both"),
        (["--method", "ties", "--rank", "4", "--energy", "0.9"], "give --rank or --energy, not both"),
        (["--method", "dare_ties", "--seed", "-1"], "--seed must be ≥ 0"),
        (
            ["--plan", "{t}/p.json", "--seed", "1"],
            "--seed cannot be combined with --plan; edit the plan instead",
        ),
        (["--plan", "{t}/p.json", "--majority", "total"], "--majority cannot be combined with --plan"),
        (["--json", "--layers"], "--layers widens the text report; --json already lists every layer"),
    ],
)
def test_merge_refuses_flags_it_would_ignore(pair, tmp_path, capsys, flags, message):
    (tmp_path / "p.json").write_text(json.dumps({"weights": [1, 1]}))
    argv = ["merge", *pair, "-o", tmp_path / "out", *[f.format(t=tmp_path) for f in flags]]
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"lorascope: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--method", "svd", "--rank", "2"],
        ["--method", "svd", "--energy", "0.5"],
        ["--method", "ties", "--density", "0.5", "--majority", "frequency", "--seed", "2", "--rank", "3"],
        ["--method", "dare_linear", "--density", "0.9", "--seed", "1"],
        ["--weights", "1,0.5", "--layers"],
    ],
)
def test_merge_flags_that_apply_are_accepted(pair, tmp_path, capsys, flags):
    code, out, err = run_cli(capsys, "merge", *pair, "-o", tmp_path / "out", *flags)
    # accepted: no error; an svd truncation that loses > 5 % is flagged with exit 1, while the
    # dense methods' loss is the method's own: reported, exit 0 (no --max-error given)
    assert err == "" and (code, "LOSSY:" in out) in ((0, False), (1, True))
    assert (code == 1) == (flags[:2] in (["--method", "svd"],))
    assert ("lossy by method" in out) == (flags[1:2] in (["ties"], ["dare_linear"]))
    code, _, err = run_cli(capsys, "merge", *pair, "-o", tmp_path / "o2", *flags, "--max-error", "1")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            {"method": "linear", "rank": 4},
            "key layers.x: rank does not apply to method linear "
            "(rank is read by svd, ties, dare_ties, dare_linear, magnitude_prune)",
        ),
        (
            {"method": "svd", "density": 0.5, "majority": "total"},
            "key layers.x: density, majority does not apply to method svd",
        ),
        ({"method": "svd", "rank": 2, "energy": 0.9}, "key layers.x: give rank or energy, not both"),
    ],
)
def test_plan_keys_the_method_does_not_read_are_refused(pair, tmp_path, capsys, layer, message):
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"weights": [1, 1], "layers": {"x": layer}}))
    code, _, err = run_cli(capsys, "merge", *pair, "--plan", plan, "-o", tmp_path / "out")
    assert code == 2 and err.startswith(f"lorascope: error: {plan}: {message}")


def test_merge_audit_plans_still_load(pair, tmp_path, capsys):
    for name in ("p.json", "p.yaml"):
        assert run_cli(capsys, "merge-audit", *pair, "--plan", tmp_path / name)[0] == 0
        code, _, err = run_cli(capsys, "merge", *pair, "--plan", tmp_path / name, "-o", tmp_path / name[2:])
        assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--vectors"], "--vectors adds to the JSON report: use it with --json or --output-dir"),
        (["--markdown", "--vectors"], "--vectors adds to the JSON report"),
        (["--json", "--summary"], "--summary shortens the table and Markdown reports; --json has no table"),
        (
            ["--explain", "q_proj", "--summary"],
            "--summary shortens the table and Markdown reports; --explain",
        ),
    ],
)
def test_merge_audit_refuses_flags_it_would_ignore(pair, capsys, flags, message):
    code, out, err = run_cli(capsys, "merge-audit", *pair, *flags)
    assert (code, out) == (2, "")
    assert err == f"lorascope: error: {message}\n" or err.startswith(f"lorascope: error: {message}")


def test_merge_audit_gradience_spellings_and_report_files(pair, tmp_path, capsys):
    a, b = pair
    code, plain, _ = run_cli(capsys, "merge-audit", a, b)
    assert code == 0
    for argv in (["--adapter-a", a, "--adapter-b", b], [a, "--adapter-b", b], ["--adapter-a", a, b]):
        assert run_cli(capsys, "merge-audit", *argv) == (0, plain, "")
    out_dir = tmp_path / "report"
    code, text, _ = run_cli(
        capsys,
        "merge-audit",
        "--adapter-a",
        a,
        "--adapter-b",
        b,
        "--output-dir",
        out_dir,
        "--energy-threshold",
        "0.8",
        "--vectors",
    )
    assert code == 0 and text.startswith("lorascope merge-audit")
    assert sorted(p.name for p in out_dir.iterdir()) == ["merge_audit.json", "merge_audit.md"]
    doc = strict_json((out_dir / "merge_audit.json").read_text())
    assert doc["options"]["energy"] == 0.8 and "principal_cosines_left" in doc["layers"][0]
    md = (out_dir / "merge_audit.md").read_text()
    assert md.startswith("# lorascope merge-audit\n") and "| `model.layers.0.self_attn.q_proj` | 4/4 |" in md
    assert run_cli(capsys, "merge-audit", a, b, "--markdown", "--energy", "0.8")[1] == md


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["merge-audit", "{a}"],
            "merge-audit takes two adapters, got 1: A B, or --adapter-a A --adapter-b B",
        ),
        (["merge-audit", "{a}", "{b}", "--adapter-a", "{b}"], "merge-audit takes two adapters, got 3"),
        (["merge-audit", "--adapter-b", "{b}"], "merge-audit takes two adapters, got 1"),
        (["merge-audit", "{a}", "{b}", "--output-dir", "{a}"], "refusing to overwrite the input"),
        (
            ["merge-audit", "{a}", "{b}", "--output-dir", "{a}/merge_audit.md"],
            "merge_audit.md: output exists and is a file; this output is a directory",
        ),
    ],
)
def test_merge_audit_adapter_spellings_refused(pair, tmp_path, capsys, argv, message):
    a, b = pair
    (tmp_path / "a" / "merge_audit.md").write_text("an input's own file")
    code, _, err = run_cli(capsys, *[x.format(a=a, b=b) for x in argv])
    assert code == 2 and message in err and err.count("\n") == 1


def test_merge_audit_and_merge_text_escape_control_characters(tmp_path, rng, capsys):
    evil = "model.layers.0.q\x1b[2J|x\u202e"  # safetensors headers cannot hold a lone surrogate
    names = [*layer_names(1), evil]
    a = write_peft(tmp_path / "a", {n: random_factors(rng, 24, 20, 4) for n in names})
    b = write_peft(tmp_path / "b", {n: random_factors(rng, 24, 20, 4) for n in names})
    runs = (
        ["merge-audit", a, b],
        ["merge-audit", a, b, "--markdown"],
        ["merge-audit", a, b, "--explain", "q\x1b"],
        ["merge", a, b, "-o", tmp_path / "m", "--layers"],
    )
    for argv in runs:
        code, out, err = run_cli(capsys, *argv)
        assert (code, err) == (0, "")
        assert "\x1b" not in out and r"q\x1b[2J" in out
        out.encode("utf-8")
    md = run_cli(capsys, "merge-audit", a, b, "--markdown")[1]
    assert r"| `model.layers.0.q\x1b[2J\|x\u202e` |" in md
    doc = strict_json(run_cli(capsys, "merge-audit", a, b, "--json")[1])
    assert evil in {x["name"] for x in doc["layers"]}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--rank", "2", "--threshold", "0.8"],
            "--threshold is the τ behind --from-audit; other modes do not read it",
        ),
        (["--energy", "0.9", "--threshold", "0.8"], "--threshold is the τ behind --from-audit"),
        (
            ["--rank", "2", "--json", "--layers", "--dry-run"],
            "--layers widens the text report; --json already lists",
        ),
    ],
)
def test_compress_refuses_flags_it_would_ignore(pair, tmp_path, capsys, flags, message):
    code, out, err = run_cli(capsys, "compress", pair[0], "-o", tmp_path / "c", *flags)
    assert (code, out) == (2, "")
    assert err.startswith(f"lorascope: error: {message}")


def test_compress_threshold_still_acts_with_from_audit(tmp_path, rng, capsys):
    layers = {n: random_factors(rng, 24, 20, 8, decay=0.6) for n in layer_names(2)}
    src = write_peft(tmp_path / "decaying", layers, config=peft_config(r=8))
    base = ["compress", src, "--from-audit", "per-layer", "--rounding", "none", "--dry-run", "--json"]
    ranks = [
        [x["new_rank"] for x in strict_json(run_cli(capsys, *base, *extra)[1])["layers"]]
        for extra in ([], ["--threshold", "0.5"])
    ]
    assert all(hi >= lo for hi, lo in zip(*ranks, strict=True)) and ranks[0] != ranks[1], ranks


def test_monitor_refuses_verbose_with_json(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    with RunWriter(path, process_index=0) as w:
        w.write("train_step", 1, loss=1.0)
    code, out, err = run_cli(capsys, "monitor", path, "--json", "--verbose")
    assert (code, out) == (2, "")
    assert err == (
        "lorascope: error: --verbose widens the text report; --json already holds every alert and threshold\n"
    )
