"""Spectra from the algebra, against dense numpy SVDs: LoKr (Kronecker), LoHa (Hadamard), ranks
above the matrix size, and finite factors of any magnitude."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import peft_config, write_peft, write_safetensors_raw

from lorascope.audit import audit_adapter
from lorascope.cli.main import main
from lorascope.errors import FormatError
from lorascope.formats import load
from lorascope.merge.pairwise import pair_metrics
from lorascope.spectral import (
    NonFiniteError,
    layer_core,
    lora_singular_values,
    truncated_factors,
    truncated_svd,
)
from lorascope.structured import delta_core
from lorascope.types import LayerInfo, LoraDelta


def dense_sv(m: np.ndarray, length: int) -> np.ndarray:
    s = np.linalg.svd(m, compute_uv=False)
    return np.concatenate([s, np.zeros(max(length - s.size, 0))])[:length]


def assert_spectrum(ours: np.ndarray, truth: np.ndarray) -> None:
    assert ours.shape == truth.shape
    np.testing.assert_allclose(ours, truth, rtol=1e-9, atol=1e-9 * truth[0])


# ---- LoKr: σ(W1 ⊗ W2) = σ(W1)·σ(W2), from the sides ------------------------------------------


def lokr_tensors(rng, form: str) -> tuple[dict, np.ndarray]:
    """One LoKr layer in a storage form LyCORIS writes, and its dense ΔW (alpha 3, lora_dim 2)."""
    w1 = rng.standard_normal((4, 3))
    t = {"lycoris_x.lokr_w1": (w1, "fp64")}
    if form == "full":
        w2 = rng.standard_normal((5, 6))
        t["lycoris_x.lokr_w2"] = (w2, "fp64")
        scale = 1.0  # both sides whole: LyCORIS forces scale 1
    else:
        a, b = rng.standard_normal((5, 2)), rng.standard_normal((2, 6))
        t.update({"lycoris_x.lokr_w2_a": (a, "fp64"), "lycoris_x.lokr_w2_b": (b, "fp64")})
        t["lycoris_x.alpha"] = (np.array(3.0), "fp32")
        w2, scale = a @ b, 1.5
    return t, scale * np.kron(w1, w2)


@pytest.mark.parametrize("form", ["full", "factored"])
def test_lokr_values_match_dense_kron(tmp_path, rng, form):
    t, dense = lokr_tensors(rng, form)
    write_safetensors_raw(tmp_path / "k.safetensors", t)
    adapter = load(tmp_path / "k.safetensors")
    delta = adapter.delta("lycoris_x")
    core = delta_core(delta)
    assert core.form == "values"
    assert "down" not in vars(delta) and "up" not in vars(delta)  # the kron factors were never formed
    assert_spectrum(core.sigma, dense_sv(dense, core.sigma.size))
    report = audit_adapter(adapter)
    np.testing.assert_allclose(report.layers[0].metrics["frobenius"], np.linalg.norm(dense), rtol=1e-12)
    # with vectors (compress), the plain factors give the same values
    assert_spectrum(delta_core(delta, vectors=True).sigma[: core.sigma.size], core.sigma)


def test_lokr_large_layer_is_fast_and_small(tmp_path, rng):
    """16×16 ⊗ 256×256 (ΔW 4096×4096): σ₁ is exact and the Kronecker factors are never built."""
    w1, w2 = rng.standard_normal((16, 16)), rng.standard_normal((256, 256))
    write_safetensors_raw(
        tmp_path / "k.safetensors", {"lycoris_x.lokr_w1": (w1, "fp64"), "lycoris_x.lokr_w2": (w2, "fp64")}
    )
    delta = load(tmp_path / "k.safetensors").delta("lycoris_x")
    sigma = delta_core(delta).sigma
    assert sigma.shape == (4096,)
    s1, s2 = np.linalg.svd(w1, compute_uv=False), np.linalg.svd(w2, compute_uv=False)
    np.testing.assert_allclose(sigma, np.sort(np.outer(s1, s2).ravel())[::-1], rtol=1e-10)
    assert "down" not in vars(delta)


def test_lokr_nan_names_the_side_key(tmp_path, rng):
    t, _ = lokr_tensors(rng, "factored")
    t["lycoris_x.lokr_w2_b"][0][1, 2] = np.nan
    write_safetensors_raw(tmp_path / "k.safetensors", t)
    with pytest.raises(FormatError, match=r"layer lycoris_x: tensor lycoris_x.lokr_w2_b contains NaN or Inf"):
        audit_adapter(tmp_path / "k.safetensors")


# ---- LoHa: rank ≤ r1·r2; the core is min(r1·r2, m, n)-sized -------------------------------------


@pytest.mark.parametrize(("r", "out", "inn"), [(2, 9, 7), (4, 9, 7), (5, 12, 30)])
def test_loha_values_match_dense(tmp_path, rng, r, out, inn):
    f = {
        f"hada_w{i}_{s}": rng.standard_normal(shape)
        for i in (1, 2)
        for s, shape in (("a", (out, r)), ("b", (r, inn)))
    }
    t = {f"lycoris_x.{k}": (v, "fp64") for k, v in f.items()}
    write_safetensors_raw(tmp_path / "h.safetensors", t)
    delta = load(tmp_path / "h.safetensors").delta("lycoris_x")
    dense = (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"])
    core = delta_core(delta, vectors=True)
    assert_spectrum(core.sigma, dense_sv(dense, r * r))
    if r * r > min(out, inn):  # the product route: a min(m, n) core, no Khatri–Rao factors
        assert core.root.shape == (min(out, inn),) * 2 and "down" not in vars(delta)
    # a rank-3 truncation from that core equals the dense one
    u, s, vt = np.linalg.svd(dense)
    t3 = truncated_svd(delta.down, delta.up, 1.0, 3, core)
    np.testing.assert_allclose(t3.u * t3.s @ t3.vt, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-9 * s[0])


# ---- rank r > min(m, n): a min(m, n)-sized core ------------------------------------------------


@pytest.mark.parametrize(("out", "inn"), [(3, 5), (6, 2)])
def test_rank_above_matrix_size(rng, out, inn):
    r = 300
    a, b = rng.standard_normal((r, inn)), rng.standard_normal((out, r))
    core = layer_core(a, b, 0.7, vectors=True)
    assert core.root.shape == (min(out, inn),) * 2  # not (300, 300)
    assert core.form == ("rows" if out <= inn else "cols")
    dense = 0.7 * b @ a
    assert_spectrum(core.sigma, dense_sv(dense, r))  # zeros padded to r, as an r×r core gives
    u, s, vt = np.linalg.svd(dense)
    for k in (1, 2):
        down, up = truncated_factors(a, b, 0.7, k, core=core, split="sqrt")
        np.testing.assert_allclose(up @ down, (u[:, :k] * s[:k]) @ vt[:k], atol=1e-10 * s[0])


def test_rank_6000_adapter_audits_quickly(tmp_path, rng):
    layers = {
        f"model.layers.{i}.q_proj": (rng.standard_normal((6000, 2)), rng.standard_normal((2, 6000)))
        for i in range(2)
    }
    d = write_peft(tmp_path / "big_r", layers, config=peft_config(r=6000, lora_alpha=6000))
    report = audit_adapter(d)
    for layer in report.layers:
        a, b = layers[layer.name.removeprefix("base_model.model.")]
        assert_spectrum(
            layer.sigma, dense_sv(b.astype(np.float32).astype(float) @ a.astype(np.float32), 6000)
        )


# ---- finite factors of any size -----------------------------------------------------------------


def test_huge_and_tiny_factors_are_exact(rng):
    a, b = rng.standard_normal((4, 30)), rng.standard_normal((20, 4))
    truth = dense_sv(b @ a, 4)
    assert_spectrum(lora_singular_values(a * 2.0**700, b * 2.0**-700), truth)  # Grams over/underflow
    assert_spectrum(lora_singular_values(a * 1e200, b), truth * 1e200)  # σ₁ ~ 1e201: exact too
    assert_spectrum(lora_singular_values(a * 1e-200, b * 1e-100), truth * 1e-300)
    with pytest.raises(NonFiniteError):
        lora_singular_values(np.where(a > 1, np.inf, a), b)


def test_audit_of_huge_finite_factors(tmp_path, rng, capsys):
    a, b = rng.standard_normal((4, 30)), rng.standard_normal((20, 4))
    d = write_peft(tmp_path / "huge", {"m.q_proj": (a * 1e200, b * 1e-200)}, dtype="fp64")
    report = audit_adapter(d)
    assert_spectrum(report.layers[0].sigma, dense_sv(2 * (b * 1e-200) @ (a * 1e200), 4))
    e = write_peft(tmp_path / "over", {"m.q_proj": (a * 1e200, b)}, dtype="fp64")
    assert main(["audit", str(e), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(e) in err[0] and "exceeds 1e+150" in err[0] and "NaN" not in err[0]


def test_merge_audit_pair_is_scale_invariant_for_huge_factors(rng):
    a1, b1, a2, b2 = (rng.standard_normal(s) for s in ((4, 30), (20, 4), (3, 30), (20, 3)))

    def delta(a, b):
        info = LayerInfo("x", "linear", a.shape[0], 20, 30, 1.0, "fp64")
        return LoraDelta(info, a, b)

    plain = pair_metrics(delta(a1, b1), delta(a2, b2))
    huge = pair_metrics(delta(a1 * 1e200, b1 * 1e-200), delta(a2 * 2.0**-600, b2 * 2.0**600))
    assert huge.overlap == pytest.approx(plain.overlap, rel=1e-9)
    np.testing.assert_allclose(huge.sigma1, plain.sigma1, rtol=1e-9)


def test_merge_audit_of_rank_above_matrix_size_is_exact_and_small(tmp_path, rng):
    """r = 3000 on 6×5 layers: merge-audit works on the min(m, n)-sized equivalent, same geometry."""
    from lorascope.merge import merge_audit
    from lorascope.structured import compact

    big = {"m.q_proj": (rng.standard_normal((3000, 5)) / 50, rng.standard_normal((6, 3000)) / 50)}
    small = {"m.q_proj": (rng.standard_normal((3, 5)), rng.standard_normal((6, 3)))}
    a = write_peft(tmp_path / "a", big, config=peft_config(r=3000, lora_alpha=3000))
    b = write_peft(tmp_path / "b", small, config=peft_config(r=3, lora_alpha=3))
    delta = load(a).delta("m.q_proj")
    c = compact(delta)
    assert c.down.shape == (5, 5) and c.up.shape == (6, 5)
    np.testing.assert_allclose(c.dense(), delta.dense(), rtol=1e-12, atol=1e-12)
    x = merge_audit(a, b).layers[0].metrics
    y = pair_metrics(c, load(b).delta("m.q_proj"))
    assert x.overlap == pytest.approx(y.overlap, rel=1e-9)
    np.testing.assert_allclose(x.sigma1[:5], dense_sv(delta.dense(), 5), rtol=1e-9)
