"""The architecture family of an adapter, read from its layer names (every format has them).

`architecture(names)` returns the first family of FAMILIES with a marker that occurs in any layer
name (markers are dotted or underscored spellings of module paths; the first family wins, so the
more specific ones come first), else "other".  Names, not the config's base model, decide: a
kohya or diffusers file carries no base model id, and two fine-tunes of one family share a row.
"""

from __future__ import annotations

from collections.abc import Sequence

# family -> markers (substrings of lower-cased layer names); order matters: first match wins
FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("t5", ("selfattention.", "encdecattention.", "densereludense.", "_selfattention_", "_densereludense_")),
    ("bert", ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")),
    ("distilbert", ("attention.q_lin", "attention.v_lin", "ffn.lin1")),
    ("gpt2", ("attn.c_attn", "mlp.c_fc", "attn.c_proj")),
    ("gpt-neox", ("attention.query_key_value", "mlp.dense_h_to_4h")),
    ("falcon", ("self_attention.query_key_value",)),
    ("mixtral-moe", ("block_sparse_moe.",)),
    ("clip-text", ("text_model.encoder.layers.",)),
    ("opt-bart-like", ("decoder.layers.", "encoder.layers.")),
    (
        "llama-like",
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"),
    ),
    ("kohya-sd-unet", ("lora_unet_",)),
    ("kohya-text-encoder", ("lora_te",)),
    ("diffusers-unet", ("down_blocks.", "up_blocks.", "mid_block.")),
    ("diffusers-transformer", ("transformer_blocks.",)),
)


def architecture(names: Sequence[str]) -> str:
    lowered = [n.lower() for n in names]
    for family, markers in FAMILIES:
        if any(m in n for n in lowered for m in markers):
            return family
    return "other"
