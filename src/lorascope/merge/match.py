"""Which layers of several adapters are the same model module.

Adapters in one format are matched by their layer names as read.  Across formats the readers'
names differ in spelling only: PEFT and diffusers give dotted module paths ("text_encoder.a.b"),
kohya and LyCORIS flattened ones ("lora_te_a_b").  Then every layer is matched on the key its
format's `match_key` gives (formats.match_key: the kohya spelling, where a PEFT model without a
pipeline component is "lora_unet_…" and the first text encoder is "lora_te1_…").  Two layers of one
adapter that collapse to the same key are refused, never silently merged.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import FormatError
from ..formats import match_key
from ..types import Adapter


def layer_keys(adapters: Sequence[Adapter]) -> list[dict[str, str]]:
    """For each adapter: {layer name → match key}."""
    if len({a.format for a in adapters}) == 1:
        return [{n: n for n in a.names} for a in adapters]
    out = []
    for a in adapters:
        keys: dict[str, str] = {}
        seen: dict[str, str] = {}
        for info in a.layers:
            name, key = info.name, match_key(a.format, info)
            if key in seen:
                raise FormatError(
                    f"layers {seen[key]} and {name} have the same match key {key}; cannot match them "
                    "across formats (convert the adapters to one format first)",
                    path=a.path,
                )
            seen[key] = name
            keys[name] = key
        out.append(keys)
    return out
