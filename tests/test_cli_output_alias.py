"""Every command that writes a file or folder takes `-o`, `--out` and `--output` as one option. A
file output in a folder that does not exist is refused by name (exit 2), which shows the alias
reached the command's output path (argparse would refuse an unknown option instead); the commands
that make their output folder (compress, merge, study) are run and their folder checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import layer_names, peft_config, random_factors, write_peft
from regime_logs import regime_run, regime_runs

from lorascope.cli.main import main


def _adapter(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    layers = {name: random_factors(rng, 12, 8, 4) for name in layer_names(2)}
    return write_peft(root / f"adapter{seed}", layers, config=peft_config(r=4, lora_alpha=8))


def _models(root: Path) -> tuple[Path, Path]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.02, (12, 8)).astype(np.float32)
    up, down = rng.normal(0, 0.1, (12, 2)), rng.normal(0, 0.1, (2, 8))
    save_file({"layers.0.q.weight": base}, str(root / "base.safetensors"))
    save_file({"layers.0.q.weight": (base + up @ down).astype(np.float32)}, str(root / "tuned.safetensors"))
    return root / "base.safetensors", root / "tuned.safetensors"


def _argv(command: str, root: Path, dest: str) -> list[str]:
    a, b = _adapter(root, 1), _adapter(root, 2)
    if command == "audit":
        return ["audit", str(a), "--out", dest]
    if command == "compress":
        return ["compress", str(a), "--output", dest, "--rank", "2"]
    if command == "merge":
        return ["merge", str(a), str(b), "--out", dest]
    if command == "merge-audit":
        return ["merge-audit", str(a), str(b), "--out", dest]
    if command == "monitor":
        return ["monitor", str(regime_run(root / "run.jsonl", "baseline", 0, steps=60)), "--out", dest]
    if command == "study":
        return ["study", str(a), "--output", dest, "-q"]
    if command == "regime features":
        return ["regime", "features", str(regime_run(root / "run.jsonl", "baseline", 0)), "--out", dest]
    if command == "regime fit":
        runs = regime_runs(root, seeds=2)
        return ["regime", "fit", *runs, "--label-key", "meta.regime", "-o", dest, "-q"]
    base, tuned = _models(root)
    return ["extract", str(base), str(tuned), "--out", dest, "--rank", "2"]


MAKES_FOLDER = ("compress", "merge", "study")


@pytest.mark.parametrize(
    "command",
    [
        "audit",
        "compress",
        "merge",
        "merge-audit",
        "monitor",
        "study",
        "regime features",
        "regime fit",
        "extract",
    ],
)
def test_output_alias_reaches_the_output(command, tmp_path, capsys):
    if command.startswith("regime"):
        pytest.importorskip("sklearn")
        pytest.importorskip("scipy")
    if command in MAKES_FOLDER:
        dest = tmp_path / "out"
        assert main(_argv(command, tmp_path, str(dest))) == 0
        assert (dest / "adapter_config.json").is_file() or (dest / "study.json").is_file()
        return
    assert main(_argv(command, tmp_path, str(tmp_path / "no-such-folder" / "out"))) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    assert "no-such-folder" in err
