"""bf16 layers read as their stored bit patterns and widened only inside the Gram blocks:
the same spectra, metrics and reports as from the float values, without a float32 copy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dense_sigma, from_bf16_bits, random_factors, to_bf16_bits, write_peft

from lorascope.audit import audit_adapter
from lorascope.formats import SafetensorsSource, StoredDelta, load
from lorascope.merge.audit import merge_audit
from lorascope.merge.pairwise import pair_metrics
from lorascope.spectral import NonFiniteError, factor_grams, layer_core
from lorascope.types import LoraDelta


def bits_and_values(rng, out, inn, r):
    a, b = random_factors(rng, out, inn, r, decay=0.7)
    bits = to_bf16_bits(a), to_bf16_bits(b)
    return bits, (from_bf16_bits(bits[0]), from_bf16_bits(bits[1]))  # the values a reader sees


@pytest.mark.parametrize(("out", "inn", "r"), [(300, 70, 6), (5, 900, 8), (3, 4, 7), (2000, 40, 64)])
def test_grams_and_spectrum_from_bits_equal_those_from_values(rng, out, inn, r):
    """r = 7 on a 3×4 layer takes the product route; (2000, 40, 64) spans several Gram blocks."""
    (ab, bb), (a, b) = bits_and_values(rng, out, inn, r)
    for got, want in zip(factor_grams(ab, bb), factor_grams(a, b), strict=True):
        np.testing.assert_array_equal(got, want)  # the same float64 values, summed in the same order
    np.testing.assert_array_equal(layer_core(ab, bb, 0.5).sigma, layer_core(a, b, 0.5).sigma)
    want = dense_sigma(a, b, 0.5)[: min(r, out, inn)]
    np.testing.assert_allclose(
        layer_core(ab, bb, 0.5).sigma[: want.size], want, rtol=1e-6, atol=1e-9 * want[0]
    )


def test_stacked_grams_mix_bits_and_floats(rng):
    (a1b, b1b), (a1, b1) = bits_and_values(rng, 120, 90, 4)
    a2, b2 = random_factors(rng, 120, 90, 3)
    want = factor_grams((a1, a2), (b1, b2))
    for got, w in zip(factor_grams((a1b, a2), (b1b, b2)), want, strict=True):
        np.testing.assert_array_equal(got, w)


def test_bits_of_a_zero_factor_with_negative_zeros_and_of_nan(rng):
    (ab, _), (a, _) = bits_and_values(rng, 30, 20, 3)
    zero = np.full((30, 3), 0x8000, dtype=np.uint16)  # -0.0 everywhere: an untrained B
    np.testing.assert_array_equal(layer_core(ab, zero).sigma, np.zeros(3))
    nan = ab.copy()
    nan[1, 2] = 0x7FC0  # a bf16 NaN
    with pytest.raises(NonFiniteError):
        layer_core(nan, zero + 0x3F80)  # B = 1.0 everywhere


@pytest.fixture
def bf16_pair(tmp_path, rng):
    layers1 = {
        f"model.layers.{i}.self_attn.{m}": random_factors(rng, 48, 40, 4)
        for i in range(2)
        for m in ("q_proj", "v_proj")
    }
    layers2 = {k: (a + 0.1 * rng.standard_normal(a.shape), b) for k, (a, b) in layers1.items()}
    return write_peft(tmp_path / "a", layers1, dtype="bf16"), write_peft(
        tmp_path / "b", layers2, dtype="bf16"
    )


def test_peft_bf16_layers_load_as_bits_and_audit_without_widening(bf16_pair, monkeypatch):
    adapter = load(bf16_pair[0])
    delta = adapter.delta(adapter.names[0])
    assert isinstance(delta, StoredDelta) and delta.bits is not None
    floats = LoraDelta(delta.info, delta.down.copy(), delta.up.copy())  # widened: the reader's values
    assert floats.down.dtype == np.float32
    np.testing.assert_array_equal(floats.down, from_bf16_bits(delta.bits[0]))
    want = audit_adapter(adapter).to_dict()

    def refuse(self):
        raise AssertionError("a whole factor was widened")

    monkeypatch.setattr(StoredDelta, "down", property(refuse))
    monkeypatch.setattr(StoredDelta, "up", property(refuse))
    assert audit_adapter(load(bf16_pair[0])).to_dict() == want
    report = merge_audit(load(bf16_pair[0]), load(bf16_pair[1]))  # Grams and the sign grid from the bits
    assert len(report.layers) == 4


def test_pair_metrics_from_bits_equal_those_from_values(bf16_pair):
    a, b = load(bf16_pair[0]), load(bf16_pair[1])
    for name in a.names:
        d1, d2 = a.delta(name), b.delta(name)
        f1 = LoraDelta(d1.info, np.array(d1.down), np.array(d1.up))
        f2 = LoraDelta(d2.info, np.array(d2.down), np.array(d2.up))
        got, want = pair_metrics(d1, d2), pair_metrics(f1, f2)
        assert got.cosine == want.cosine and got.sign_conflict == want.sign_conflict
        np.testing.assert_array_equal(got.sigma1, want.sigma1)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_other_dtypes_load_as_stored_values_without_bits(rng, tmp_path, dtype):
    """A layer stored in fp16 / fp32 comes as stored too, with no bit patterns for the Gram
    products: its `down` / `up` are the values the source reads, in the stored dtype."""
    a, b = random_factors(rng, 24, 40, 3)
    adapter = load(write_peft(tmp_path / "a", {"model.layers.0.self_attn.q_proj": (a, b)}, dtype=dtype))
    delta = adapter.delta(adapter.names[0])
    assert isinstance(delta, StoredDelta) and delta.bits is None
    src = SafetensorsSource(adapter.path + "/adapter_model.safetensors")  # the same file, read by `get`
    dk, uk = delta.info.extras["keys"]
    for got, key in ((delta.down, dk), (delta.up, uk)):
        want = src.get(key).reshape(got.shape)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_kohya_and_diffusers_bf16_layers_load_as_bits(bf16_pair, tmp_path, fmt):
    """The other plain-LoRA readers take the same route: converted from the bf16 PEFT adapter,
    every layer is a StoredDelta with bf16 bits and the same spectrum."""
    from lorascope.convert import convert_file

    peft = load(bf16_pair[0])
    written = convert_file(bf16_pair[0], tmp_path / f"out-{fmt}.safetensors", to=fmt).dest
    other = load(written)
    assert all(other.delta(n).bits is not None for n in other.names)
    for name, theirs in zip(peft.names, other.names, strict=True):
        d, e = peft.delta(name), other.delta(theirs)
        np.testing.assert_allclose(e.dense(), d.dense(), rtol=1e-6, atol=1e-9)  # ΔW kept by the conversion
        want = dense_sigma(d.down, d.up, d.scale)[: d.info.rank]
        np.testing.assert_allclose(layer_core(*e.bits, e.scale).sigma, want, rtol=1e-6, atol=1e-9 * want[0])
