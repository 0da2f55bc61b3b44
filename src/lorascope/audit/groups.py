"""Grouping layers by what they are: module type (attention / MLP / other) and transformer block.

Module type (`module_type(name)`), decided on the dotted module path, in this order (numbers are
skipped: the leaf of `attn1.to_out.0` is `to_out`, its parent `attn1`):
1. the leaf's parent, if it is named in ATTENTION_CONTAINERS or MLP_CONTAINERS (so InternLM's
   `attention.wo` is attention while T5's `DenseReluDense.wo` is MLP);
2. the leaf, looked up in ATTENTION_LEAVES and MLP_LEAVES;
3. the enclosing modules further out, from the leaf outwards: the first container named decides;
4. otherwise a BERT-style `….output.dense` (an `output` container without an attention container
   around it) is MLP; anything else is "other".
So GPT-2 `attn.c_proj` is attention and `mlp.c_proj` MLP, BERT `attention.output.dense` attention
and `layer.N.output.dense` MLP, Mixtral `block_sparse_moe.experts.N.w1/w2/w3` (and the router
`block_sparse_moe.gate`) MLP, diffusers `attn1.to_q` / `attn2.to_out.0` attention and `ff.net.0.proj`
/ `ff.net.2` MLP.  diffusers' `attentions.N` (plural) wraps a whole transformer (projections, attention
and feed-forward), so it decides nothing.  Names without dots (kohya's `lora_unet_…_attn1_to_q`) are
matched on their underscore-separated tail and infixes instead.

Block (`block_of(name)`): the path up to and including the first number that follows a named
component (`model.layers.7.mlp.up_proj` → ("model.layers.7", 7); T5 `encoder.block.2.layer.1.…` →
("encoder.block.2", 2), so encoder and decoder blocks stay apart).  Names without a number have no
block.  Energy shares use the squared Frobenius norm of the scaled update, Σσᵢ².
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..metrics import percentile

MODULE_TYPES = ("attention", "mlp", "other")

ATTENTION_LEAVES = frozenset(
    {
        "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query", "key", "value", "q", "k", "v", "o",
        "c_attn", "to_q", "to_k", "to_v", "to_out", "to_qkv", "add_q_proj", "add_k_proj", "add_v_proj",
        "to_add_out", "q_lin", "k_lin", "v_lin", "out_lin", "query_key_value", "wqkv", "w_pack",
        "in_proj", "qkv",
    }
)  # fmt: skip
MLP_LEAVES = frozenset(
    {
        "gate_proj", "up_proj", "down_proj", "gate_up_proj", "w1", "w2", "w3", "wi", "wi_0", "wi_1", "wo",
        "c_fc", "fc1", "fc2", "fc_in", "fc_out", "dense_h_to_4h", "dense_4h_to_h", "lin1", "lin2",
        "proj_mlp",
    }
)  # fmt: skip
ATTENTION_CONTAINERS = frozenset(
    {
        "attention", "attn", "self_attn", "selfattention", "encdecattention", "self_attention",
        "cross_attn", "cross_attention", "attn1", "attn2", "attn2_0",
    }
)  # fmt: skip
MLP_CONTAINERS = frozenset(
    {
        "mlp", "ffn", "ff", "ff_context", "feed_forward", "feedforward", "densereludense", "intermediate",
        "block_sparse_moe", "experts", "moe", "shared_expert", "shared_experts",
    }
)  # fmt: skip

_NUMBER = re.compile(r"\d+")


def module_type(name: str) -> str:
    """ "attention" | "mlp" | "other" for a module path (rules in the module docstring)."""
    parts = [p.lower() for p in name.split(".")]
    if len(parts) == 1:
        return _flat_type(parts[0])
    names = [p for p in parts if not _NUMBER.fullmatch(p)]
    if not names:
        return "other"
    leaf, outer = names[-1], names[:-1]
    if outer and outer[-1] in ATTENTION_CONTAINERS:
        return "attention"
    if outer and outer[-1] in MLP_CONTAINERS:
        return "mlp"
    if leaf in ATTENTION_LEAVES:
        return "attention"
    if leaf in MLP_LEAVES:
        return "mlp"
    for part in reversed(outer):
        if part in ATTENTION_CONTAINERS:
            return "attention"
        if part in MLP_CONTAINERS:
            return "mlp"
    return "mlp" if "output" in outer and leaf == "dense" else "other"


def _flat_type(name: str) -> str:
    """The same rules on an underscore-joined name (kohya / LyCORIS spellings)."""
    padded = f"_{name}_"
    for leaves, kind in ((ATTENTION_LEAVES, "attention"), (MLP_LEAVES, "mlp")):
        if any(name.endswith(f"_{leaf}") and len(leaf) > 1 for leaf in leaves):
            return kind
    # the innermost container: the one whose "_c_" infix starts last
    hits = [(padded.rfind(f"_{c}_"), "attention") for c in ATTENTION_CONTAINERS]
    hits += [(padded.rfind(f"_{c}_"), "mlp") for c in MLP_CONTAINERS]
    pos, kind = max(hits)
    if pos >= 0:
        return kind
    return "mlp" if "_output_dense" in padded and "_attention_" not in padded else "other"


def block_of(name: str) -> tuple[str, int] | None:
    """(block label, index): the path through the first number after a named component, or None."""
    parts = name.split(".") if "." in name else name.split("_")
    for i in range(1, len(parts)):
        if _NUMBER.fullmatch(parts[i]) and not _NUMBER.fullmatch(parts[i - 1]):
            sep = "." if "." in name else "_"
            return sep.join(parts[: i + 1]), int(parts[i])
    return None


def by_type(
    names: Sequence[str],
    params: Sequence[int],
    live: Sequence[bool],
    values: Mapping[str, Sequence[float]],
    energy_keys: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Per module type: n_layers, params (all layers), and over its live layers the means of
    stable rank and utilisation and the p50 / p90 (numpy linear interpolation) of each k@τ."""
    kinds = [module_type(n) for n in names]
    out: dict[str, dict[str, Any]] = {}
    for kind in MODULE_TYPES:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        alive = [i for i in idx if live[i]]
        entry: dict[str, Any] = {"n_layers": len(idx), "n_dead": len(idx) - len(alive)}
        entry["params"] = int(sum(params[i] for i in idx))
        for metric in ("stable_rank", "utilisation"):
            vals = [values[metric][i] for i in alive]
            entry[f"{metric}_mean"] = float(np.mean(vals)) if vals else 0.0
        for key in energy_keys:
            ks = np.asarray([values[key][i] for i in alive], dtype=float)
            entry[key] = {
                "p50": percentile(ks, 50) if ks.size else 0.0,
                "p90": percentile(ks, 90) if ks.size else 0.0,
            }
        out[kind] = entry
    return out


def block_energy(names: Sequence[str], energies: Sequence[float], top: int = 5) -> dict[str, Any]:
    """Energy share per block: share = Σ‖ΔW‖_F² of the block's layers / Σ over all layers.

    `blocks` lists every block in order of first appearance; `top` the `top` largest shares;
    `hhi` = Σ share² over the blocks and, as one more bucket, the layers with no block
    (1/n for n equal blocks, 1 when one block holds everything); `unassigned_share` is that bucket.
    """
    total = float(sum(energies))
    acc: dict[str, list[Any]] = {}
    unassigned = 0.0
    for name, e in zip(names, energies, strict=True):
        where = block_of(name)
        if where is None:
            unassigned += e
            continue
        slot = acc.setdefault(where[0], [where[1], 0.0, 0])
        slot[1] += e
        slot[2] += 1

    def share(e: float) -> float:
        return e / total if total > 0 else 0.0

    blocks = [
        {"block": label, "index": idx, "n_layers": n, "energy": e, "share": share(e)}
        for label, (idx, e, n) in acc.items()
    ]
    ranked = sorted(blocks, key=lambda b: (-b["share"], b["block"]))[:top]
    hhi = sum(b["share"] ** 2 for b in blocks) + share(unassigned) ** 2
    return {
        "n_blocks": len(blocks),
        "total_energy": total,
        "hhi": hhi,
        "unassigned_share": share(unassigned),
        "top": [{"block": b["block"], "share": b["share"]} for b in ranked],
        "blocks": blocks,
    }
