"""`merge --method linear` of PEFT adapters of different ranks, loaded back by real PEFT: exactly
w₁ΔW₁ + w₂ΔW₂.  PEFT's own add_weighted_adapter(combination_type="linear") refuses different
ranks and, for equal ranks, adds cross terms (it mixes A's and B's separately)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lorascope.merge import LayerPlan, MergePlan, merge_files

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.torch

TARGETS = ("emb", "q_proj", "v_proj")
WEIGHTS = (0.7, 0.4)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 16)
        self.q_proj = torch.nn.Linear(16, 24)
        self.v_proj = torch.nn.Linear(24, 16)

    def forward(self, input_ids):
        return self.v_proj(torch.tanh(self.q_proj(self.emb(input_ids))))


def _adapter(base, path, r: int, alpha: int, rslora: bool, seed: int):
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(TARGETS), init_lora_weights=False, use_rslora=rslora
    )
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    model.save_pretrained(path)
    return model


def _deltas(model, name="default") -> dict[str, np.ndarray]:
    out = {}
    for full, mod in model.named_modules():
        if hasattr(mod, "get_delta_weight") and full.split(".")[-1] in TARGETS and name in mod.r:
            with torch.no_grad():
                out[full.split(".")[-1]] = mod.get_delta_weight(name).double().numpy()
    return out


@pytest.fixture
def adapters(tmp_path):
    torch.manual_seed(0)
    base = Tiny()
    m1 = _adapter(base, tmp_path / "a", r=8, alpha=16, rslora=True, seed=1)
    m2 = _adapter(base, tmp_path / "b", r=4, alpha=4, rslora=False, seed=2)
    return base, tmp_path / "a", tmp_path / "b", _deltas(m1), _deltas(m2)


def test_linear_merge_loaded_by_peft_is_exact(adapters, tmp_path):
    base, a, b, d1, d2 = adapters
    report = merge_files([a, b], tmp_path / "out", MergePlan(WEIGHTS, LayerPlan("linear")))
    assert report.verified
    merged = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out")
    got = _deltas(merged)
    assert set(got) == set(TARGETS)
    for name in TARGETS:
        want = WEIGHTS[0] * d1[name] + WEIGHTS[1] * d2[name]
        assert np.linalg.norm(got[name] - want) <= 1e-6 * np.linalg.norm(want), name
    x = torch.randint(0, 30, (3, 5))
    with torch.no_grad():
        ref = copy.deepcopy(base)
        params = dict(ref.named_parameters())
        for name in TARGETS:
            params[f"{name}.weight"].add_(
                torch.from_numpy(WEIGHTS[0] * d1[name] + WEIGHTS[1] * d2[name]).float()
            )
        torch.testing.assert_close(merged(x), ref(x), rtol=1e-5, atol=1e-5)


def test_peft_linear_refuses_different_ranks(adapters):
    base, a, b, _, _ = adapters
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), a, adapter_name="a")
    model.load_adapter(b, adapter_name="b")
    with pytest.raises(ValueError, match="same r"):
        model.add_weighted_adapter(["a", "b"], list(WEIGHTS), "lin", combination_type="linear")


def test_peft_linear_adds_cross_terms_for_equal_ranks(tmp_path):
    torch.manual_seed(0)
    base = Tiny()
    m1 = _adapter(base, tmp_path / "a", r=4, alpha=8, rslora=False, seed=1)
    m2 = _adapter(base, tmp_path / "b", r=4, alpha=8, rslora=False, seed=2)
    d1, d2 = _deltas(m1), _deltas(m2)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    model.add_weighted_adapter(["a", "b"], list(WEIGHTS), "lin", combination_type="linear")
    theirs = _deltas(model, "lin")
    merge_files([tmp_path / "a", tmp_path / "b"], tmp_path / "out", MergePlan(WEIGHTS, LayerPlan("linear")))
    ours = _deltas(peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out"))
    for name in TARGETS:
        want = WEIGHTS[0] * d1[name] + WEIGHTS[1] * d2[name]
        assert np.linalg.norm(ours[name] - want) <= 1e-6 * np.linalg.norm(want)
        assert np.linalg.norm(theirs[name] - want) > 0.05 * np.linalg.norm(want)  # cross terms
