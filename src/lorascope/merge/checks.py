"""merge's checks on its inputs and results: finite inputs (one line naming the adapter, counted
from 1, its file, the layer and the tensor) and the post-merge error of each layer against what
its method intended, which must be a finite number and at most `max_error` to pass."""

from __future__ import annotations

import numpy as np

from ..errors import FormatError, InvalidArgumentError
from ..passes import check_factors
from ..types import Adapter, LoraDelta

MAX_ERROR = 0.05  # default --max-error: a layer may lose at most 5 % of its intended ΔW (Frobenius)


def adapter_label(adapter: Adapter, i: int) -> str:
    """How merge messages name an input: "adapter 2 (path/b)", counted from 1."""
    return f"adapter {i + 1} ({adapter.path})" if adapter.path else f"adapter {i + 1}"


def check_finite_input(adapter: Adapter, i: int, d: LoraDelta) -> None:
    """One line naming the adapter, its file, the layer and the tensor key for NaN/Inf factors."""
    try:
        check_factors(d, None)
    except FormatError as e:  # the same line, led by the adapter's number and file
        raise FormatError(f"{adapter_label(adapter, i)}: {e.message}", keys=e.keys) from None
    if not np.isfinite(d.scale):
        raise FormatError(f"{adapter_label(adapter, i)}: layer {d.name}: its scale is not finite")


def rel_error(factors, weights, intended, down, up) -> tuple[float, float]:
    """(‖T − up@down‖_F/‖T‖_F, ‖T‖_F), T = intended (dense) or Σ wᵢ sᵢ upᵢ downᵢ (from factors, exact).
    Overflow gives inf/NaN here, silently: `checked_error` turns it into one error line."""
    with np.errstate(all="ignore"):
        return _rel_error(factors, weights, intended, down, up)


def _rel_error(factors, weights, intended, down, up) -> tuple[float, float]:
    d = np.asarray(down, np.float64)
    u = np.asarray(up, np.float64)
    if intended is not None:
        norm = float(np.linalg.norm(intended))
        diff = intended - u @ d  # (out, in)
        return (float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))), norm
    a = np.concatenate([f[0] for f in factors] + [d], axis=0)  # (Σr + k, in)
    ups = [w * s * f for (_, f, s), w in zip(factors, weights, strict=True)]
    b = np.concatenate([*ups, -u], axis=1)  # (out, Σr + k)
    a, b = _balanced(a, b)
    k = d.shape[0]
    diff2 = float(np.sum((a @ a.T) * (b.T @ b)))
    ta, tb = a[:-k], b[:, :-k]
    norm2 = float(np.sum((ta @ ta.T) * (tb.T @ tb)))
    norm = float(np.sqrt(max(norm2, 0.0)))
    diff = float(np.sqrt(max(diff2, 0.0)))
    return (diff / norm if norm > 0 else diff), norm


def _balanced(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a·2^-e, b·2^e) per rank-one term (row i of a, column i of b): the same products aᵢbᵢ, with
    both sides of similar magnitude, so factors like 1e200 (down) and 1e-200 (up) do not overflow
    the Grams below (powers of two: exact)."""
    ea = np.frexp(np.max(np.abs(a), axis=1, initial=0.0))[1]  # (R,)
    eb = np.frexp(np.max(np.abs(b), axis=0, initial=0.0))[1]  # (R,)
    e = (ea - eb) // 2
    return np.ldexp(a, -e[:, None]), np.ldexp(b, e[None, :])


def checked_error(name: str, sources: str, err: float, norm: float) -> tuple[float, float]:
    """(err, norm), or InvalidArgumentError when either is not a finite number: never a NaN figure.
    `sources`: the layer's inputs as `adapter_label`s."""
    if not (np.isfinite(err) and np.isfinite(norm)):
        raise InvalidArgumentError(
            f"layer {name} of {sources}: the merged update or its post-merge error is not finite "
            "(float64 overflow: these updates are too large to merge in float64)"
        )
    return err, norm
