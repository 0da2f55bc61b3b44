"""`merge` / `merge_files`: exact linear merges of different ranks, re-factorised methods, plans."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_names, peft_config, random_factors, write_peft

from lorascope.errors import InvalidArgumentError, UnsupportedError
from lorascope.formats import load
from lorascope.merge import LayerPlan, MergeOptions, MergePlan, merge_adapters, merge_files
from lorascope.merge.methods import METHODS, get_method


def two_adapters(tmp_path, rng, r1=8, r2=4, alpha1=16, alpha2=4, extra_layer=False, dtype="fp32"):
    names = layer_names(2)
    l1 = {n: random_factors(rng, 24, 16, r1, decay=0.7) for n in names}
    l2 = {n: random_factors(rng, 24, 16, r2, decay=0.6) for n in names}
    if extra_layer:
        l2["model.layers.0.mlp.up_proj"] = random_factors(rng, 40, 16, r2)
    p1 = write_peft(tmp_path / "a", l1, config=peft_config(r=r1, lora_alpha=alpha1), dtype=dtype)
    p2 = write_peft(tmp_path / "b", l2, config=peft_config(r=r2, lora_alpha=alpha2), dtype=dtype)
    return p1, p2


def dense(adapter, name) -> np.ndarray:
    return adapter.delta(name).dense()


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.7, -0.3)])
def test_linear_merge_is_exact_across_ranks(tmp_path, rng, weights):
    p1, p2 = two_adapters(tmp_path, rng)
    report = merge_files([p1, p2], tmp_path / "out", MergePlan(weights, LayerPlan("linear")))
    a, b, out = load(p1), load(p2), load(tmp_path / "out")
    for name in a.names:
        want = weights[0] * dense(a, name) + weights[1] * dense(b, name)
        got = dense(out, name)
        assert out.info(name).rank == 12
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
    assert report.verified and report.summary()["max_rel_error"] < 1e-6


def test_svd_merge_is_the_best_rank_k_of_the_weighted_sum(tmp_path, rng):
    p1, p2 = two_adapters(tmp_path, rng)
    plan = MergePlan((1.0, 0.5), LayerPlan("svd", rank=5))
    report = merge_files([p1, p2], tmp_path / "out", plan, MergeOptions(dtype="fp64"))
    a, b, out = load(p1), load(p2), load(tmp_path / "out")
    for name, layer in zip(a.names, report.layers, strict=True):
        total = dense(a, name) + 0.5 * dense(b, name)
        u, s, vt = np.linalg.svd(total)
        best = (u[:, :5] * s[:5]) @ vt[:5]
        np.testing.assert_allclose(dense(out, name), best, atol=1e-10 * s[0])
        assert layer.rel_error == pytest.approx(
            np.linalg.norm(total - best) / np.linalg.norm(total), rel=1e-6
        )


@pytest.mark.parametrize("method", list(METHODS))
def test_every_registered_method_merges_files_end_to_end(tmp_path, rng, method):
    """The battery a new method gets by being registered: merge two adapters of different ranks,
    write, read back byte-identical (the post-merge check), and the plan's method is reported."""
    p1, p2 = two_adapters(tmp_path, rng)
    report = merge_files([p1, p2], tmp_path / "out", MergePlan((1.0, 0.5), LayerPlan(method)))
    assert report.verified and {x.method for x in report.layers} == {method}
    out = load(tmp_path / "out")
    assert [x.name for x in report.layers] == list(out.names)
    assert all(np.isfinite(out.delta(n).dense()).all() for n in out.names)
    if get_method(method).kind == "factor" and method == "linear":
        assert report.summary()["max_rel_error"] < 1e-6


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear", "magnitude_prune"])
def test_dense_methods_refactorise_and_report_their_error(tmp_path, rng, method):
    p1, p2 = two_adapters(tmp_path, rng)
    plan = MergePlan((1.0, 1.0), LayerPlan(method, density=0.6, rank=6), seed=3)
    report = merge_files([p1, p2], tmp_path / "out", plan, MergeOptions(dtype="fp64"))
    a, b, out = load(p1), load(p2), load(tmp_path / "out")
    m = get_method(method)
    for index, (name, layer) in enumerate(zip(a.names, report.layers, strict=True)):
        extra = {"rng": np.random.default_rng([3, index])} if m.needs_rng else {}
        intended = m.fn([dense(a, name), dense(b, name)], (1.0, 1.0), density=0.6, **extra)
        got = dense(out, name)
        assert out.info(name).rank == 6
        err = np.linalg.norm(intended - got) / np.linalg.norm(intended)
        assert layer.rel_error == pytest.approx(err, rel=1e-6)
        s = np.linalg.svd(intended, compute_uv=False)
        assert err == pytest.approx(np.sqrt(np.sum(s[6:] ** 2)) / np.linalg.norm(s), rel=1e-6)  # optimal


def test_per_layer_plan_and_compress_first(tmp_path, rng):
    p1, p2 = two_adapters(tmp_path, rng)
    names = layer_names(2)
    plan = MergePlan(
        (1.0, 1.0),
        LayerPlan("linear"),
        {
            names[0]: LayerPlan("linear", weights=(0.5, 2.0), compress_first={0: 2}),
            names[1]: LayerPlan("svd", rank=3),
        },
    )
    report = merge_files([p1, p2], tmp_path / "out", plan, MergeOptions(dtype="fp64"))
    a, b, out = load(p1), load(p2), load(tmp_path / "out")
    u, s, vt = np.linalg.svd(dense(a, names[0]))
    a2 = (u[:, :2] * s[:2]) @ vt[:2]
    np.testing.assert_allclose(dense(out, names[0]), 0.5 * a2 + 2.0 * dense(b, names[0]), atol=1e-10)
    assert out.info(names[0]).rank == 2 + 4 and out.info(names[1]).rank == 3
    assert [x.method for x in report.layers] == ["linear", "svd", "linear", "linear"]
    assert report.layers[0].compress_first == {0: 2}


def test_layers_in_one_adapter_only_are_kept_with_their_weight(tmp_path, rng):
    p1, p2 = two_adapters(tmp_path, rng, extra_layer=True)
    merge_files([p1, p2], tmp_path / "out", MergePlan((1.0, 0.5)))
    b, out = load(p2), load(tmp_path / "out")
    name = "model.layers.0.mlp.up_proj"
    np.testing.assert_allclose(dense(out, name), 0.5 * dense(b, name), atol=1e-6)
    assert set(out.names) == set(b.names)


def test_fp16_inputs_stay_fp16_and_inputs_untouched(tmp_path, rng):
    p1, p2 = two_adapters(tmp_path, rng, dtype="fp16")
    before = [(p / "adapter_model.safetensors").read_bytes() for p in (p1, p2)]
    report = merge_files([p1, p2], tmp_path / "out", MergePlan((1.0, 1.0)))
    assert {x.dtype for x in load(tmp_path / "out").layers} == {"fp16"}
    assert report.summary()["max_rel_error"] < 2e-3  # fp16 rounding of w·s·B only
    assert before == [(p / "adapter_model.safetensors").read_bytes() for p in (p1, p2)]


def test_refusals(tmp_path, rng):
    p1, p2 = two_adapters(tmp_path, rng)
    a, b = load(p1), load(p2)
    with pytest.raises(InvalidArgumentError, match="at least two"):
        merge_adapters([a], MergePlan((1.0,)))
    with pytest.raises(InvalidArgumentError, match="3 weights for 2"):
        merge_adapters([a, b], MergePlan((1.0, 1.0, 1.0)))
    with pytest.raises(InvalidArgumentError, match="no adapter has"):
        merge_adapters([a, b], MergePlan((1.0, 1.0), layers={"nope": LayerPlan()}))
    with pytest.raises(InvalidArgumentError, match="output already exists|refusing"):
        merge_files([p1, p2], p1, MergePlan((1.0, 1.0)))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InvalidArgumentError, match="already exists"):
        merge_files([p1, p2], tmp_path / "full", MergePlan((1.0, 1.0)))


def test_dora_is_refused(tmp_path, rng):
    names = layer_names(1)
    layers = {n: random_factors(rng, 24, 16, 4) for n in names}
    extra = {f"base_model.model.{n}.lora_magnitude_vector": (np.ones(24), "fp32") for n in names}
    cfg = peft_config(r=4, lora_alpha=8, use_dora=True)
    d = write_peft(tmp_path / "dora", layers, config=cfg, extra=extra)
    p = write_peft(tmp_path / "plain", layers, config=peft_config(r=4, lora_alpha=8))
    with pytest.raises(UnsupportedError, match="DoRA"):
        merge_files([p, d], tmp_path / "out", MergePlan((1.0, 1.0)))


def test_mismatched_shapes_are_refused(tmp_path, rng):
    from lorascope.errors import FormatError

    n = layer_names(1)[0]
    p1 = write_peft(tmp_path / "a", {n: random_factors(rng, 24, 16, 4)}, config=peft_config(r=4))
    p2 = write_peft(tmp_path / "b", {n: random_factors(rng, 32, 16, 4)}, config=peft_config(r=4))
    with pytest.raises(FormatError) as err:
        merge_files([p1, p2], tmp_path / "out", MergePlan((1.0, 1.0)))
    assert (
        str(err.value)
        == f"layer {n}: shapes differ across adapters: adapter 1 ({p1}) 24×16, adapter 2 ({p2}) 32×16"
    )


def test_peft_and_kohya_inputs_are_matched_and_merged_exactly(tmp_path, rng):
    from lorascope import convert_file as convert
    from lorascope.merge import merge_audit

    p1, p2 = two_adapters(tmp_path, rng)
    kohya_file = tmp_path / "b.safetensors"
    convert(p2, kohya_file, to="kohya")
    assert merge_audit(p1, kohya_file).summary["n_shared"] == 4
    for order, dest in (((p1, kohya_file), tmp_path / "o1"), ((kohya_file, p1), tmp_path / "o2.safetensors")):
        report = merge_files(list(order), dest, MergePlan((1.0, 1.0)))
        assert report.verified and load(dest).format == load(order[0]).format
    a, b, out = load(p1), load(p2), load(tmp_path / "o1")
    for name in a.names:
        want = dense(a, name) + dense(b, name)
        assert np.linalg.norm(dense(out, name) - want) <= 1e-6 * np.linalg.norm(want)


def test_unrelated_adapters_are_refused(tmp_path, rng):
    from lorascope.errors import FormatError

    p1, _ = two_adapters(tmp_path, rng)
    other = write_peft(tmp_path / "c", {"x.q": random_factors(rng, 24, 16, 4)}, config=peft_config(r=4))
    with pytest.raises(FormatError, match="shares no layer"):
        merge_files([p1, other], tmp_path / "out", MergePlan((1.0, 1.0)))


def test_three_adapters_of_three_ranks(tmp_path, rng):
    names = layer_names(2)
    paths, ranks, weights = [], (8, 4, 2), (1.0, -0.5, 2.0)
    for i, r in enumerate(ranks):
        layers = {n: random_factors(rng, 24, 16, r, decay=0.7) for n in names}
        paths.append(write_peft(tmp_path / f"a{i}", layers, config=peft_config(r=r, lora_alpha=2 * r)))
    report = merge_files(paths, tmp_path / "out", MergePlan(weights, LayerPlan("linear")))
    inputs, out = [load(p) for p in paths], load(tmp_path / "out")
    for name in names:
        want = sum(w * dense(a, name) for w, a in zip(weights, inputs, strict=True))
        assert out.info(name).rank == sum(ranks)
        assert np.linalg.norm(dense(out, name) - want) <= 1e-6 * np.linalg.norm(want)
    assert [x.inputs for x in report.layers] == [(0, 1, 2)] * len(names)


def test_post_merge_check_catches_a_tampered_file(tmp_path, rng, monkeypatch):
    from lorascope.errors import FormatError
    from lorascope.formats import _io

    p1, p2 = two_adapters(tmp_path, rng)
    add = _io.SafetensorsWriter.add

    def flip_one_byte(self, key, arr, dtype):
        if key.endswith("lora_B.weight") and not getattr(self, "flipped", False):
            self.flipped = True
            arr = np.array(arr, copy=True)
            arr.view(np.uint8).flat[0] ^= 1  # one bit of the first entry
        add(self, key, arr, dtype)

    monkeypatch.setattr(_io.SafetensorsWriter, "add", flip_one_byte)
    with pytest.raises(FormatError, match="post-merge check: layer .* reads back different"):
        merge_files([p1, p2], tmp_path / "out", MergePlan((1.0, 1.0), LayerPlan("linear")))


@pytest.mark.parametrize(
    "lp",
    [
        LayerPlan("linear", compress_first={0: 3}),
        LayerPlan("svd"),
        LayerPlan("svd", rank=30),
        LayerPlan("svd", energy=0.9),
        LayerPlan("ties", density=0.5),
        LayerPlan("ties", density=0.5, rank=100),
        LayerPlan("dare_linear", density=0.5, energy=0.8),
    ],
)
def test_lazy_merge_knows_each_rank_before_merging(tmp_path, rng, lp):
    from lorascope.merge.execute import merge_lazy

    p1, p2 = two_adapters(tmp_path, rng)
    plan = MergePlan((1.0, 0.5), lp)
    lazy, done = merge_lazy([load(p1), load(p2)], plan)
    planned = [x.rank for x in lazy.layers]
    assert [d.info.rank for d in lazy.iter_deltas()] == planned  # the loader also checks this
    eager, results = merge_adapters([load(p1), load(p2)], plan)
    assert [x.rank for x in results] == planned == [x.rank for x in eager.layers]
    for name in eager.names:
        np.testing.assert_array_equal(lazy.delta(name).up, eager.delta(name).up)
