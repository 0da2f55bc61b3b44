"""`spectral_pass`: the one pass over an adapter's layers that audit, compress and the callback share.

Per layer, on the worker threads of the thread policy (`parallel.ordered_map`): read the factors
(`adapter.loader`), build the layer's spectral core once (`structured.delta_core`: float64 Grams,
finiteness check, eigen-core; LoKr / LoHa layers from their two sides), then hand (delta, core)
to the caller's `then` *in the worker*, so whatever the caller derives from the layer (metrics, a
truncation) runs in parallel too and the core is never recomputed.  Results come back in layer
order; a few layers are in flight at once, so memory does not grow with the adapter.  merge-audit
has its own pass over *pairs* of layers (merge/audit.py) built on the same core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from .errors import FormatError
from .parallel import ordered_map
from .spectral import Core, NonFiniteError, SpectrumOverflowError
from .structured import delta_core
from .types import Adapter, LayerInfo, LoraDelta

R = TypeVar("R")
# The largest σ₁ the commands accept: their energies Σσ² and sums over layers stay far below the
# float64 maximum (1.8e308).  The spectrum itself is exact for finite factors of any size.
SIGMA_LIMIT = 1e150
Progress = Callable[[int, int, str], None]  # (layers done, total, layer name)


def nonfinite_error(info: LayerInfo, which: str, path: str | None, side: int | None = None) -> FormatError:
    """The one error for a factor holding NaN/Inf (`which` = "down" | "up"): file, layer, tensor key.
    `side`: for a LoKr / LoHa layer, which of its two sides (the reader's `side_keys`)."""
    if side is not None and "side_keys" in info.extras:
        key = info.extras["side_keys"][side][0 if which == "up" else 1]
    else:
        key = info.extras.get("keys", ("down", "up"))[0 if which == "down" else 1]
    return FormatError(f"layer {info.name}: tensor {key} contains NaN or Inf", path=path, keys=[key])


def check_factors(delta: LoraDelta, path: str | None) -> None:
    """nonfinite_error for the first factor of `delta` that holds NaN/Inf (down, then up)."""
    for which, x in (("down", delta.down), ("up", delta.up)):
        if not np.isfinite(x).all():
            raise nonfinite_error(delta.info, which, path)


def check_sigma(info: LayerInfo, sigma: np.ndarray, path: str | None) -> None:
    """FormatError when σ₁ exceeds SIGMA_LIMIT: the spectrum is exact, but its energies σ² and
    their sums would overflow float64 (every metric and merge figure uses them)."""
    if sigma.size and sigma[0] > SIGMA_LIMIT:
        raise FormatError(
            f"layer {info.name}: σ₁ = {sigma[0]:.3g} exceeds {SIGMA_LIMIT:g}: its energies (σ²) "
            "and their sums would overflow float64",
            path=path,
        )


def spectral_pass(
    adapter: Adapter,
    then: Callable[[LoraDelta, Core], R],
    *,
    vectors: bool = False,
    progress: Progress | None = None,
) -> Iterator[R]:
    """then(delta, core) for every layer, in layer order (module docstring).  `vectors`: the
    core keeps its eigenvectors (needed for truncation)."""

    def one(info: LayerInfo) -> R:
        delta = adapter.loader(info)
        try:
            core = delta_core(delta, vectors=vectors)
        except NonFiniteError as e:
            side = e.side if hasattr(delta, "sides") else None
            raise nonfinite_error(info, e.which, adapter.path, side) from None
        except SpectrumOverflowError as e:
            raise FormatError(f"layer {info.name}: {e}", path=adapter.path) from None
        if core.s2.size:
            check_sigma(info, core.sigma, adapter.path)
        return then(delta, core)

    total = len(adapter.layers)
    for i, result in enumerate(ordered_map(one, adapter.layers)):
        if progress:
            progress(i + 1, total, adapter.layers[i].name)
        yield result
