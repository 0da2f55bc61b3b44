"""Which layers of several adapters are the same model module.

Adapters in one format are matched by their layer names as read.  Across formats the readers'
names differ in spelling only: PEFT and diffusers give dotted module paths ("text_encoder.a.b"),
kohya and LyCORIS flattened ones ("lora_te_a_b").  Then every name is mapped to its kohya spelling
(formats.kohya.kohya_name: a PEFT model without a pipeline component is "lora_unet_…", the prefix
lorascope's own converter writes) and matched on that.  Two layers of one adapter that collapse to
the same key are refused, never silently merged.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import FormatError
from ..formats.kohya import kohya_name
from ..types import Adapter

_FLAT = ("kohya", "lycoris")


def layer_keys(adapters: Sequence[Adapter]) -> list[dict[str, str]]:
    """For each adapter: {layer name → match key}."""
    if len({a.format for a in adapters}) == 1:
        return [{n: n for n in a.names} for a in adapters]
    two_te = any(n.startswith(("text_encoder_2.", "lora_te2_")) for a in adapters for n in a.names)
    out = []
    for a in adapters:
        keys: dict[str, str] = {}
        seen: dict[str, str] = {}
        for name in a.names:
            key = name if a.format in _FLAT else kohya_name(name, two_text_encoders=two_te)
            if key in seen:
                raise FormatError(
                    f"layers {seen[key]} and {name} have the same kohya name {key}; cannot match them "
                    "across formats (convert the adapters to one format first)",
                    path=a.path,
                )
            seen[key] = name
            keys[name] = key
        out.append(keys)
    return out
