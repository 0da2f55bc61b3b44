"""Checks shared by every reader: factor shapes, leftovers, outlier shapes across layers."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

from ..errors import FormatError, keys_preview
from ..types import LayerInfo

# A LoRA scale multiplies the layer's output in the model's dtype: beyond float32's range it is inf
# there (and its square overflows the float64 spectra), so alpha is held to that range.
MAX_ALPHA = 3.4028234663852886e38  # the largest float32
ALPHA_RULE = "a finite number within float32's range (|alpha| ≤ 3.4e38)"


def finite_alpha(v: Any) -> bool:
    """A number a LoRA scale can be made of.  json.loads accepts NaN / Infinity literals and
    integers too large for a float, which would poison every metric or overflow later."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        x = float(v)
    except OverflowError:
        return False
    return math.isfinite(x) and abs(x) <= MAX_ALPHA


def factor_dims(
    path: str, name: str, down_shape, up_shape, keys: tuple[str, str]
) -> tuple[str, int, int, int]:
    """Validate LoRA factor shapes; return (kind, rank, out, in_flat).

    down: (r, in) or (r, c_in, *kernel); up: (out, r) or (out, r, 1, …) for conv.
    """
    dk, uk = keys
    if len(down_shape) != len(up_shape) or len(down_shape) < 2:
        raise FormatError(
            f"layer {name}: {dk} has shape {list(down_shape)} but {uk} has shape {list(up_shape)} "
            "(both must be 2-D, or both conv-shaped)",
            path=path,
            keys=keys,
        )
    r, r_up = down_shape[0], up_shape[1]
    if 0 in (*down_shape, *up_shape):
        raise FormatError(
            f"layer {name}: {dk} has shape {list(down_shape)} and {uk} has shape {list(up_shape)}; "
            "a LoRA factor needs rank ≥ 1 and non-empty dimensions",
            path=path,
            keys=keys,
        )
    if r != r_up:
        raise FormatError(
            f"layer {name}: rank mismatch, {dk} has r={r} (shape {list(down_shape)}) but {uk} has "
            f"r={r_up} (shape {list(up_shape)})",
            path=path,
            keys=keys,
        )
    if len(down_shape) == 2:
        return "linear", r, up_shape[0], down_shape[1]
    if any(k != 1 for k in up_shape[2:]):
        raise FormatError(
            f"layer {name}: conv {uk} must have a 1×1 kernel, got shape {list(up_shape)}",
            path=path,
            keys=keys,
        )
    in_flat = 1
    for d in down_shape[1:]:
        in_flat *= d
    return "conv", r, up_shape[0], in_flat


def reject_leftovers(path: str, leftovers, what: str) -> None:
    """Readers are total: any key they did not understand is an error, never a silent drop."""
    if leftovers:
        raise FormatError(
            f"{len(leftovers)} key(s) not understood as {what}: {keys_preview(leftovers)}",
            path=path,
            keys=sorted(leftovers),
        )


_INDEX = re.compile(r"(?<=[._])\d+(?=[._]|$)")


def check_outlier_shapes(path: str, layers: list[LayerInfo]) -> None:
    """Flag a single layer whose shape differs from all its siblings.

    Siblings are layers whose names are equal once numeric indices are replaced ("layers.3.q_proj"
    and "layers.7.q_proj").  Models with legitimately varying widths (UNet down/up blocks) produce
    groups with several shapes; only a group of ≥4 where exactly one member disagrees with all
    the others is an error, which is what a corrupted or mis-saved layer looks like.
    """
    groups: dict[str, list[LayerInfo]] = defaultdict(list)
    for layer in layers:
        groups[_INDEX.sub("N", layer.name)].append(layer)
    for members in groups.values():
        if len(members) < 4:
            continue
        shapes = defaultdict(list)
        for m in members:
            shapes[(m.out_features, m.in_features)].append(m)
        if len(shapes) != 2:
            continue
        (s_odd, odd), (s_common, _) = sorted(shapes.items(), key=lambda kv: len(kv[1]))
        if len(odd) == 1:
            raise FormatError(
                f"layer {odd[0].name}: shape (out={s_odd[0]}, in={s_odd[1]}) is inconsistent with its "
                f"{len(members) - 1} sibling layers (out={s_common[0]}, in={s_common[1]})",
                path=path,
            )
