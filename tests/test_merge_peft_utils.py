"""The dense merge methods against PEFT's own `peft.utils.merge_utils` (ties, dare_linear, dare_ties,
magnitude_prune) on equal dense inputs.

PEFT's DARE draws its mask with `torch.bernoulli`; here that draw is replaced by the very mask
lorascope draws (`rng.random(shape, dtype=float32) < density`, one per input in order, from a
Generator with the same seed), so both sides drop the same entries.  Magnitude trims agree when
density·size is an integer (PEFT keeps int(density·size) entries, lorascope round(density·size))
and the magnitudes are distinct (random floats).  The conventions that differ are stated in
docs/merge.md and `merge/methods.py`: PEFT elects signs on the unweighted tensors and divides the
disjoint sum by the count of agreeing entries, lorascope elects on wᵢ·tᵢ and divides by Σ|wᵢ| over
them: for equal weights w, PEFT's result is w × lorascope's (identical for w = 1).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from lorascope.merge import methods

torch = pytest.importorskip("torch")
merge_utils = pytest.importorskip("peft.utils.merge_utils")

SHAPE = (24, 20)  # 480 entries: density 0.25 / 0.5 / 0.75 keep an integer count


def deltas(seed: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SHAPE) for _ in range(n)]


def peft(name: str, xs, weights, **kw) -> np.ndarray:
    fn = getattr(merge_utils, name)
    out = fn([torch.from_numpy(x) for x in xs], torch.tensor(weights, dtype=torch.float64), **kw)
    return out.numpy()


def same_bernoulli(monkeypatch, xs, density: float, seed: int) -> None:
    """PEFT's `torch.bernoulli` returns lorascope's DARE masks, in the order lorascope draws them."""
    rng = np.random.default_rng(seed)
    masks = iter([rng.random(x.shape, dtype=np.float32) < density for x in xs])

    def bernoulli(p, *args, **kwargs):
        return torch.from_numpy(next(masks).astype(np.float64))

    monkeypatch.setattr(merge_utils.torch, "bernoulli", bernoulli)


@pytest.mark.parametrize("density", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("majority", ["total", "frequency"])
@pytest.mark.parametrize("w", [1.0, 0.7])
def test_ties_equals_peft_for_equal_weights(density, majority, w):
    xs = deltas(1)
    ours = methods.ties(xs, [w] * 3, density=density, majority=majority)
    theirs = peft("ties", xs, [w] * 3, density=density, majority_sign_method=majority)
    np.testing.assert_allclose(theirs, w * ours, rtol=0, atol=1e-12)  # PEFT = w × ours


@pytest.mark.parametrize("density", [0.25, 0.75, 1.0])
def test_magnitude_prune_equals_peft_for_any_weights(density):
    xs = deltas(2)
    weights = [1.0, -0.4, 2.5]
    ours = methods.magnitude_prune(xs, weights, density=density)
    with pytest.warns(UserWarning) if density >= 1 else contextlib.nullcontext():
        theirs = peft("magnitude_prune", xs, weights, density=density)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12)


@pytest.mark.parametrize("density", [0.3, 0.8])
def test_dare_linear_equals_peft_with_the_same_mask(monkeypatch, density):
    xs = deltas(3)
    weights = [0.5, 1.0, -0.25]
    ours = methods.dare_linear(xs, weights, density=density, rng=np.random.default_rng(7))
    same_bernoulli(monkeypatch, xs, density, 7)
    theirs = peft("dare_linear", xs, weights, density=density)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12)


@pytest.mark.parametrize("density", [0.3, 0.8])
@pytest.mark.parametrize("majority", ["total", "frequency"])
def test_dare_ties_equals_peft_with_the_same_mask(monkeypatch, density, majority):
    xs = deltas(4)
    ours = methods.dare_ties(xs, [1.0] * 3, density=density, majority=majority, rng=np.random.default_rng(11))
    same_bernoulli(monkeypatch, xs, density, 11)
    theirs = peft("dare_ties", xs, [1.0] * 3, density=density, majority_sign_method=majority)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12)


def test_density_one_keeps_everything_on_both_sides():
    """Density 1: PEFT skips pruning (with a warning), lorascope's masks keep every entry."""
    xs = deltas(5)
    weights = [1.0, 2.0, 0.5]
    with pytest.warns(UserWarning, match="no pruning will be performed"):
        theirs = peft("dare_linear", xs, weights, density=1.0)
    ours = methods.dare_linear(xs, weights, density=1.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, sum(w * x for w, x in zip(weights, xs, strict=True)), atol=1e-12)


def test_unequal_weights_differ_as_documented():
    """Unequal positive weights: PEFT elects on unweighted tensors and divides by the count;
    lorascope elects on wᵢ·tᵢ and divides by Σ wᵢ (mergekit's convention).  Not equal in general."""
    xs = deltas(6)
    weights = [1.0, 3.0, 0.5]
    ours = methods.ties(xs, weights, density=0.5)
    theirs = peft("ties", xs, weights, density=0.5)
    assert not np.allclose(theirs, ours)
