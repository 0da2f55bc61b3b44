"""A real transformers.Trainer run (tiny BERT from a config, CPU) with PEFT LoRA + LorascopeCallback."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lorascope.monitor import monitor_run  # noqa: E402
from lorascope.spectral import lora_singular_values  # noqa: E402
from lorascope.telemetry import read_run  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int):
        g = np.random.default_rng(seed)
        self.ids = g.integers(1, 100, size=(n, 16))
        self.labels = (self.ids[:, 0] > 50).astype(np.int64)  # learnable from token 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": torch.tensor(self.ids[i]), "labels": torch.tensor(self.labels[i])}


def _model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    base = transformers.BertForSequenceClassification(cfg)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    return peft.get_peft_model(base, lora)


def _train(tmp_path, callbacks, steps=12):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    model = _model()
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Data(64, 1), eval_dataset=_Data(32, 2), callbacks=callbacks
    )
    trainer.train()
    return model


def test_trainer_run_writes_a_log_monitor_reads(tmp_path):
    from lorascope.integrations.hf import LorascopeCallback

    model = _train(
        tmp_path, [LorascopeCallback(snapshot_every=4, model_name="tiny-bert", dataset_name="random")]
    )
    events = read_run(tmp_path / "run.jsonl")
    kinds = [e.event for e in events]
    assert kinds[0] == "run_start" and kinds[1] == "config" and kinds[-1] == "run_end"
    steps = [e for e in events if e.event == "train_step"]
    assert len(steps) == 6 and all(
        isinstance(e.get("loss"), float) for e in steps
    )  # no epoch-only duplicates
    evals = [e for e in events if e.event == "eval"]
    assert len(evals) == 3 and evals[0].get("split") == "eval" and "ppl" in evals[0].get("metrics")
    snaps = [e for e in events if e.event == "spectral"]
    assert [e.step for e in snaps] == [0, 4, 8, 12]
    assert snaps[0].get("summary")["n_dead"] == 4  # B = 0 at init: every layer dead, no NaN
    # the last snapshot equals a dense SVD of the trained factors
    name = snaps[-1].get("layers")[0]["name"]
    mod = dict(model.named_modules())[name]
    a = mod.lora_A["default"].weight.detach().double().numpy()
    b = mod.lora_B["default"].weight.detach().double().numpy()
    dense = np.linalg.svd(mod.scaling["default"] * b @ a, compute_uv=False)
    assert snaps[-1].get("layers")[0]["sigma_max"] == pytest.approx(dense[0], rel=1e-5)
    assert np.allclose(lora_singular_values(a, b, mod.scaling["default"])[:4], dense[:4], rtol=1e-6)
    report = monitor_run(tmp_path / "run.jsonl")
    assert report.summary["n_evals"] == 3 and report.summary["spectral"]["n_snapshots"] == 4
    assert report.summary["final_eval_loss"] == pytest.approx(evals[-1].get("metrics")["loss"])
    assert report.summary["model"] == "tiny-bert"


def test_live_monitor_stops_on_nan_only_when_asked(tmp_path):
    from types import SimpleNamespace

    from lorascope.integrations.hf import LorascopeCallback

    def run(stop_on):
        path = tmp_path / f"{stop_on}.jsonl"
        cb = LorascopeCallback(path=str(path), stop_on=stop_on)
        args = SimpleNamespace(output_dir=str(tmp_path), seed=0, learning_rate=1e-4)
        state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=10)
        control = SimpleNamespace(should_training_stop=False)
        cb.on_train_begin(args, state, control, model=None)
        cb.on_log(args, state, control, logs={"loss": 0.7, "grad_norm": 1.0, "learning_rate": 1e-4})
        state.global_step = 2
        cb.on_log(args, state, control, logs={"epoch": 0.1})  # epoch-only: not a train_step
        cb.on_log(args, state, control, logs={"loss": float("nan"), "grad_norm": 1.0, "learning_rate": 1e-4})
        cb.on_train_end(args, state, control)
        return control.should_training_stop, read_run(path)

    stopped, events = run("error")
    assert stopped is True
    alerts = [e for e in events if e.event == "alert"]
    assert [a.get("code") for a in alerts] == ["NONFINITE_LOSS"] and alerts[0].step == 2
    assert [e.get("status") for e in events if e.event == "run_end"] == ["aborted"]
    assert sum(e.event == "train_step" for e in events) == 2
    stopped, events = run(None)
    assert stopped is False and any(e.get("code") == "NONFINITE_LOSS" for e in events)
