"""GeometryProbe in a plain torch loop and LorascopeCallback's geometry events in a real Trainer run,
checked against independent torch / numpy computations."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lorascope.errors import InvalidArgumentError  # noqa: E402
from lorascope.integrations.probe import GeometryProbe  # noqa: E402
from lorascope.telemetry import RunWriter, read_run  # noqa: E402

pytestmark = pytest.mark.torch


def _eff_rank_share(sigma: np.ndarray) -> float:
    """exp(entropy of σ/Σσ) / len(σ), by hand."""
    p = sigma[sigma > 1e-6 * sigma.max()] / sigma[sigma > 1e-6 * sigma.max()].sum()
    return float(np.exp(-(p * np.log(p)).sum()) / sigma.size)


def _by_hand(params) -> dict[str, float]:
    """Norms of the concatenated parameters / gradients and cos(g, w), in float64."""
    w = torch.cat([p.detach().reshape(-1).double() for p in params])
    g = torch.cat([p.grad.reshape(-1).double() for p in params])
    wn, gn = torch.linalg.vector_norm(w).item(), torch.linalg.vector_norm(g).item()
    cos = (torch.dot(w, g) / (wn * gn)).item()
    return {"weight_norm": wn, "grad_norm": gn, "cos_grad_weight": cos, "grad_to_weight_ratio": gn / wn}


class TinyLM(torch.nn.Module):
    """Embedding -> two Linear layers with a LayerNorm -> tied output head: a GPT in miniature."""

    def __init__(self, vocab: int = 20, dim: int = 16):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, dim)
        self.fc = torch.nn.Linear(dim, 4 * dim)
        self.proj = torch.nn.Linear(4 * dim, dim)
        self.ln = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx)  # (B, T, C)
        x = x + self.proj(torch.nn.functional.gelu(self.fc(x)))
        logits = self.head(self.ln(x))  # (B, T, V)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _loop(model, probe, steps: int, params, clip: float = 0.05):
    """A nanoGPT-style loop; returns the by-hand geometry at each due step (after clipping)."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    want = {}
    for step in range(steps):
        idx = torch.randint(0, 20, (4, 8), generator=gen)
        loss = model(idx, torch.roll(idx, -1, 1))
        loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(params, clip)
        if probe.due(step):
            want[step] = {**_by_hand(params), "loss": loss.item(), "grad_norm_preclip": pre.item()}
        probe.record(step, loss=loss, grad_norm_preclip=pre, lr=1e-2)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return want


def test_probe_full_scope_matches_torch_by_hand(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    params = list(model.parameters())  # the tied head counted once, as model.parameters() does
    with RunWriter(tmp_path / "run.jsonl") as w:
        probe = GeometryProbe(model, w, every=3, scope="full", max_matrices=2)
        want = _loop(model, probe, 7, params)
    assert [m.shape for m in probe.matrices] == [(64, 16), (16, 64)]  # fc, proj; the embedding left out
    events = read_run(tmp_path / "run.jsonl")
    geo = [e for e in events if e.event == "geometry"]
    assert [e.step for e in geo] == [0, 3, 6] and [e.event for e in events].count("train_step") == 3
    for e in geo:
        for key, value in want[e.step].items():
            assert e.get(key) == pytest.approx(value, rel=1e-5), key
        assert e.get("grad_norm") < e.get("grad_norm_preclip")  # the gradient was clipped
        assert e.get("n_params") == sum(p.numel() for p in params) and e.get("scope") == "full"
    ts = [e for e in events if e.event == "train_step"]
    assert ts[0].get("grad_norm") == pytest.approx(want[0]["grad_norm_preclip"])  # pre-clip, as HF
    # spectral complexity of the final weights, by numpy SVD (the probe measured before the last step)
    sigmas = [np.linalg.svd(m.detach().double().numpy(), compute_uv=False) for m in probe.matrices]
    assert probe.measure().spectral_complexity == pytest.approx(np.mean([_eff_rank_share(s) for s in sigmas]))


def test_probe_lora_scope_and_parameters_given(tmp_path):
    torch.manual_seed(0)
    base = TinyLM()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc", "proj"])
    model = peft.get_peft_model(base, cfg)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    with RunWriter(tmp_path / "run.jsonl") as w:
        probe = GeometryProbe(model, w, every=2)  # auto: the model has LoRA layers
        want = _loop(model, probe, 5, lora, clip=10.0)
    assert probe.scope == "lora" and len(probe.params) == 4
    geo = [e for e in read_run(tmp_path / "run.jsonl") if e.event == "geometry"]
    assert [e.step for e in geo] == [0, 2, 4] and geo[0].get("scope") == "lora"
    assert geo[0].get("spectral_complexity") == 0.0  # B = 0 at init: every layer dead
    for e in geo[1:]:
        for key in ("weight_norm", "grad_norm", "cos_grad_weight"):
            assert e.get(key) == pytest.approx(want[e.step][key], rel=1e-5), key
    shares = []
    for mod in (model.base_model.model.fc, model.base_model.model.proj):
        a = mod.lora_A["default"].weight.detach().double().numpy()
        b = mod.lora_B["default"].weight.detach().double().numpy()
        shares.append(_eff_rank_share(np.linalg.svd(mod.scaling["default"] * b @ a, compute_uv=False)[:4]))
    assert probe.measure().spectral_complexity == pytest.approx(np.mean(shares), rel=1e-6)
    # plain parameters (no module): scope full, no matrices picked from embeddings it cannot see
    plain = GeometryProbe(list(base.parameters()), tmp_path / "p.jsonl", every=1)
    assert plain.scope == "full" and plain.measure().weight_norm > 0
    plain.close()


def test_probe_refuses_bad_arguments(tmp_path):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(InvalidArgumentError, match="scope 'lora' needs LoRA layers: pass the model"):
        GeometryProbe(params, tmp_path / "a.jsonl", scope="lora")
    with pytest.raises(InvalidArgumentError, match="every must be ≥ 0 steps"):
        GeometryProbe(params, tmp_path / "a.jsonl", every=-1)
    frozen = [torch.nn.Parameter(torch.ones(3), requires_grad=False)]
    with pytest.raises(InvalidArgumentError, match="no trainable parameters to track"):
        GeometryProbe(frozen, tmp_path / "a.jsonl")
    probe = GeometryProbe(params, tmp_path / "b.jsonl", every=5)
    assert probe.record(3) is None  # not due: nothing measured
    g = probe.record(5)  # due, but no gradient yet: norms of the weights only, cos unknown
    assert (
        g["grad_norm"] == 0.0 and g["cos_grad_weight"] is None and g["weight_norm"] == pytest.approx(3**0.5)
    )
    probe.close()


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int):
        g = np.random.default_rng(1)
        self.ids = g.integers(1, 100, size=(n, 16))
        self.labels = (self.ids[:, 0] > 50).astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": torch.tensor(self.ids[i]), "labels": torch.tensor(self.labels[i])}


class _Witness(transformers.TrainerCallback):
    """Computes the geometry by hand in the same hook, after LorascopeCallback."""

    def __init__(self):
        self.seen = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        self.seen[state.global_step + 1] = _by_hand(params)


def test_callback_writes_geometry_checked_by_hand(tmp_path):
    from lorascope.integrations.hf import LorascopeCallback

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = peft.get_peft_model(transformers.BertForSequenceClassification(cfg), lora)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=5e-3,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
        max_grad_norm=0.05,
    )  # fmt: skip
    witness = _Witness()
    cb = LorascopeCallback(geometry_every=3, snapshot_every=0, live_monitor=False)
    transformers.Trainer(model=model, args=args, train_dataset=_Data(64), callbacks=[cb, witness]).train()
    events = read_run(tmp_path / "run.jsonl")
    geo = [e for e in events if e.event == "geometry"]
    logged = {e.step: e for e in events if e.event == "train_step"}
    assert [e.step for e in geo] == [3, 6] and all(e.get("scope") == "lora" for e in geo)
    for e in geo:
        for key, value in witness.seen[e.step].items():
            assert e.get(key) == pytest.approx(value, rel=1e-5), key
        assert e.get("spectral_complexity") > 0
    # step 3 has no log: pre-clip unknown; step 6 is logged: the Trainer's pre-clip norm and loss
    assert geo[0].get("grad_norm_preclip") is None and geo[0].get("loss") is None
    assert geo[1].get("grad_norm_preclip") == logged[6].get("grad_norm") > geo[1].get("grad_norm")
    assert geo[1].get("loss") == logged[6].get("loss")


def test_callback_without_clipping_reports_the_norm_as_preclip(tmp_path):
    from types import SimpleNamespace

    from lorascope.integrations.hf import LorascopeCallback

    torch.manual_seed(0)
    model = TinyLM()
    idx = torch.randint(0, 20, (4, 8))
    model(idx, idx).backward()
    cb = LorascopeCallback(path=str(tmp_path / "run.jsonl"), geometry_every=2, live_monitor=False)
    args = SimpleNamespace(output_dir=str(tmp_path), seed=0, max_grad_norm=0.0)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=2)
    control = SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, state, control, model=model)
    for step in (0, 1):  # completes steps 1 and 2; 2 is due
        cb.on_pre_optimizer_step(args, state, control)
        state.global_step = step + 1
    cb.on_train_end(args, state, control)
    geo = [e for e in read_run(tmp_path / "run.jsonl") if e.event == "geometry"]
    assert [e.step for e in geo] == [2] and geo[0].get("scope") == "full"
    assert (
        geo[0].get("grad_norm_preclip")
        == geo[0].get("grad_norm")
        == pytest.approx(_by_hand(list(model.parameters()))["grad_norm"], rel=1e-6)
    )
