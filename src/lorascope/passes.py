"""`spectral_pass`: the one pass over an adapter's layers that audit, compress and the callback share.

Per layer, on the worker threads of the thread policy (`_parallel.ordered_map`): read the factors
(`adapter.loader`), build the layer's spectral core once (`spectral.layer_core`: float64 Grams,
finiteness check, eigen-core), then hand (delta, core) to the caller's `then` *in the worker*, so
whatever the caller derives from the layer (metrics, a truncation) runs in parallel too and the
core is never recomputed.  Results come back in layer order; a few layers are in flight at once,
so memory does not grow with the adapter.  merge-audit has its own pass over *pairs* of layers
(merge/audit.py) built on the same core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from ._parallel import ordered_map
from .errors import FormatError
from .spectral import Core, NonFiniteError, layer_core
from .types import Adapter, LayerInfo, LoraDelta

R = TypeVar("R")
Progress = Callable[[int, int, str], None]  # (layers done, total, layer name)


def nonfinite_error(info: LayerInfo, which: str, path: str | None) -> FormatError:
    """The one error for a factor holding NaN/Inf (`which` = "down" | "up"): file, layer, tensor key."""
    key = info.extras.get("keys", ("down", "up"))[0 if which == "down" else 1]
    return FormatError(f"layer {info.name}: tensor {key} contains NaN or Inf", path=path, keys=[key])


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
            core = layer_core(delta.down, delta.up, info.scale, vectors=vectors)
        except NonFiniteError as e:
            raise nonfinite_error(info, e.which, adapter.path) from None
        return then(delta, core)

    total = len(adapter.layers)
    for i, result in enumerate(ordered_map(one, adapter.layers)):
        if progress:
            progress(i + 1, total, adapter.layers[i].name)
        yield result
