"""`import lorascope` and a whole `lorascope audit` run never import torch (checked in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import layer_names, peft_config, random_factors, write_peft

CHECK = """
import sys
{body}
heavy = sorted(m for m in ("torch", "transformers", "peft", "pandas") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _run(body: str) -> str:
    p = subprocess.run(
        [sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_import_does_not_import_torch():
    assert _run("import lorascope, lorascope.cli.main").strip().endswith("HEAVY=")


def test_audit_command_does_not_import_torch(tmp_path, rng):
    layers = {n: random_factors(rng, 16, 12, 4) for n in layer_names(2)}
    write_peft(tmp_path, layers, config=peft_config(r=4), dtype="bf16")
    body = (
        "from lorascope.cli.main import main\n"
        f"code = main(['audit', {str(tmp_path)!r}, '--json', '--layers'])\n"
        "assert code == 0, code\n"
    )
    out = _run(body)
    assert out.rstrip().endswith("HEAVY=")
    report = json.loads(out.rsplit("HEAVY=", 1)[0])
    assert report["schema"] == "lorascope.audit/v1" and report["layers"][0]["dtype"] == "bf16"


def test_console_entry_point(tmp_path, rng):
    write_peft(tmp_path, {"m.q": random_factors(rng, 8, 8, 2)}, config=peft_config(r=2))
    p = subprocess.run(
        [sys.executable, "-m", "lorascope", "audit", str(tmp_path), "--json"], capture_output=True, text=True
    )
    assert p.returncode == 0 and json.loads(p.stdout)["summary"]["n_layers"] == 1


def test_merge_audit_and_merge_do_not_import_torch(tmp_path, rng):
    for sub in ("a", "b"):
        layers = {n: random_factors(rng, 16, 12, 4) for n in layer_names(2)}
        write_peft(tmp_path / sub, layers, config=peft_config(r=4), dtype="bf16")
    a, b, out = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "m")
    body = (
        "from lorascope.cli.main import main\n"
        f"assert main(['merge-audit', {a!r}, {b!r}, '--json']) == 0\n"
        f"assert main(['merge', {a!r}, {b!r}, '-o', {out!r}, '--method', 'ties', '--json',\n"
        "              '--max-error', '1']) == 0\n"
    )
    out_text = _run(body)
    assert out_text.rstrip().endswith("HEAVY=")
