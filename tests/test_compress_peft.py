"""The compressed PEFT adapter, loaded by the real `peft` library onto a tiny torch model, has exactly
the truncated-SVD ΔW per layer, and the model's outputs differ from the original only by that."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lorascope.compress import compress_file
from lorascope.compress.plan import RankMode

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
pytestmark = pytest.mark.torch

TARGETS = ("emb", "q_proj", "v_proj", "o_proj")


class Tiny(torch.nn.Module):
    """Embedding → two blocks of (q, v, o) with a tanh between → head; every width different."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, 16)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    "q_proj": torch.nn.Linear(16, 24),
                    "v_proj": torch.nn.Linear(24, 20),
                    "o_proj": torch.nn.Linear(20, 16),
                }
            )
            for _ in range(2)
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, input_ids):
        h = self.emb(input_ids)  # (B, T, 16)
        for blk in self.blocks:
            h = h + blk["o_proj"](torch.tanh(blk["v_proj"](torch.tanh(blk["q_proj"](h)))))
        return self.head(h)  # (B, T, 3)


def _truncated(dense: np.ndarray, k: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(dense, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k]


def _lora_modules(model) -> dict[str, torch.nn.Module]:
    prefix = "base_model.model."
    return {
        n.removeprefix(prefix): m
        for n, m in model.named_modules()
        if hasattr(m, "get_delta_weight") and n.split(".")[-1] in TARGETS
    }


def _trained_adapter(tmp_path, rslora: bool):
    torch.manual_seed(0)
    base = Tiny().double()
    cfg = peft.LoraConfig(
        r=8,
        lora_alpha=12,
        target_modules=list(TARGETS),
        modules_to_save=["head"],
        init_lora_weights=False,
        use_rslora=rslora,
    )
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():  # give each layer its own decaying spectrum, and train the head a bit
        for i, (name, p) in enumerate(model.named_parameters()):
            if "lora_B" in name or "lora_embedding_B" in name:
                decay = 0.3 + 0.08 * (i % 7)
                p.mul_(torch.tensor(decay, dtype=p.dtype) ** torch.arange(p.shape[1], dtype=p.dtype))
            if "modules_to_save" in name:
                p.add_(0.1)
    model = model.float()
    model.save_pretrained(tmp_path / "in")
    return base.float(), model


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_truncated_adapter(tmp_path, rslora):
    base, orig = _trained_adapter(tmp_path, rslora)
    report = compress_file(tmp_path / "in", tmp_path / "out", RankMode("energy", 0.8))
    plan = report.plan
    assert len(set(plan.values())) > 1 and max(plan.values()) < 8  # per-layer ranks, all truncated

    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out").eval()
    orig.eval()
    before, after = _lora_modules(orig), _lora_modules(loaded)
    assert set(before) == set(after) == set(plan)
    reference = copy.deepcopy(base)
    ref_params = dict(reference.named_parameters())
    with torch.no_grad():
        for name, mod in before.items():
            dense = mod.get_delta_weight("default").double().numpy()  # (out, in); embedding: (num, dim)
            want = _truncated(dense, plan[name])
            got = after[name].get_delta_weight("default").double().numpy()
            assert after[name].r["default"] == plan[name]
            assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want), name
            ref_params[f"{name}.weight"].add_(torch.from_numpy(want).float())
        for key in ("weight", "bias"):  # the trained head is copied unchanged
            ref_params[f"head.{key}"].copy_(
                orig.base_model.model.head.modules_to_save["default"].state_dict()[key]
            )

        x = torch.randint(0, 40, (4, 7))
        y_new, y_ref, y_orig = loaded(x), reference(x), orig(x)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5)
    assert (y_new - y_orig).abs().max() > 1e-4  # the truncation did change something


def test_uniform_rank_and_report_on_real_adapter(tmp_path):
    base, orig = _trained_adapter(tmp_path, False)
    report = compress_file(tmp_path / "in", tmp_path / "out", RankMode("rank", 3))
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "out")
    before, after = _lora_modules(orig), _lora_modules(loaded)
    for x in report.layers:
        dense = before[x.name].get_delta_weight("default").double().detach().numpy()
        got = after[x.name].get_delta_weight("default").double().detach().numpy()
        rel = np.linalg.norm(dense - got) / np.linalg.norm(dense)
        assert x.new_rank == 3 and rel == pytest.approx(x.rel_error, rel=1e-4, abs=1e-6)
