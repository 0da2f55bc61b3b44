"""A PEFT LoraConfig as lorascope reads it: validated fields, per-module scaling, and which tensors
beside the LoRA are known full weights.

* `load_config` parses `adapter_config.json` (`files.json_loads`: every failure one line) and
  `check_lora_fields` checks the fields that decide a layer's scale (also used for each component
  of diffusers' `lora_adapter_metadata`).
* `Scaling` gives each module its (r, alpha, scale) under PEFT's rules (`PatternIndex`).
* Known full weights (listed as `modules_to_save`, copied by the PEFT writer, never audited):
  - the modules of `modules_to_save`, matched as PEFT matches them (a module path ending with a
    listed name);
  - the head PEFT saves for a task even when `modules_to_save` is null: `classifier` and `score`
    for SEQ_CLS and TOKEN_CLS, `qa_outputs` for QUESTION_ANS (`PeftModelFor…` add them itself);
  - embedding layers saved with `save_embedding_layers` (`<module>.weight` of an input / output
    embedding, by the names transformers models give them, and `<module>.base_layer.weight` of a
    layer that has LoRA factors in the file).
  Any other tensor is not understood, and an error.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError
from ..files import json_loads
from ..types import peft_scale
from ._checks import ALPHA_RULE, finite_alpha
from ._header import short_repr
from ._patterns import PatternIndex

# The heads PeftModelForSequenceClassification / …TokenClassification / …QuestionAnswering add to
# modules_to_save at load time, so they are saved even when the config's list is null.
TASK_HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}
# Input / output embedding module names of transformers models (PEFT's own list is embed_tokens,
# lm_head); `save_embedding_layers` saves `<module>.weight` of the model's embeddings.
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "word_embeddings", "wte", "embed_in", "embed_out", "shared")
_EMBEDDING = re.compile(rf"^(?P<m>(?:.+\.)?(?:{'|'.join(EMBEDDING_NAMES)}))\.(?:weight|bias)$")
_BASE_LAYER = re.compile(r"^(?P<m>.+)\.base_layer\.(?:weight|bias)$")


def load_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=path) from None
    cfg = json_loads(text, path)
    if not isinstance(cfg, dict):
        raise FormatError("expected a JSON object", path=path)
    peft_type = str(cfg.get("peft_type", "LORA")).upper()  # PEFT's own spelling is "LORA"
    if peft_type != "LORA":
        raise UnsupportedError(f"peft_type {short_repr(peft_type)} is not a LoRA adapter", path=path)
    check_lora_fields(cfg, path)
    mts = cfg.get("modules_to_save")
    if mts is not None and not (isinstance(mts, list) and all(isinstance(m, str) and m for m in mts)):
        raise FormatError(
            f"'modules_to_save' must be a list of module names, got {short_repr(mts)}", path=path
        )
    return cfg


def check_lora_fields(cfg: Mapping[str, Any], path: str | Path, where: str = "") -> None:
    """r, lora_alpha, rank_pattern and alpha_pattern of a LoRA config (PEFT's, or one component of
    diffusers' `lora_adapter_metadata`, named by `where`) have the types and ranges PEFT needs."""
    r = cfg.get("r", 8)
    if not _positive_int(r):
        raise FormatError(f"{where}'r' must be a positive integer, got {short_repr(r)}", path=path)
    alpha = cfg.get("lora_alpha", 8)
    if not finite_alpha(alpha):
        raise FormatError(f"{where}'lora_alpha' must be {ALPHA_RULE}, got {short_repr(alpha)}", path=path)
    for key, ok, what in (
        ("rank_pattern", _positive_int, "a positive integer"),
        ("alpha_pattern", finite_alpha, ALPHA_RULE),
    ):
        patterns = cfg.get(key) or {}
        if not isinstance(patterns, dict):
            raise FormatError(f"{where}'{key}' must be a JSON object, got {short_repr(patterns)}", path=path)
        for k, v in patterns.items():
            if not ok(v):
                raise FormatError(
                    f"{where}'{key}' value for {short_repr(k)} must be {what}, got {short_repr(v)}", path=path
                )


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class Scaling:
    """One config's r / lora_alpha / rank_pattern / alpha_pattern / use_rslora → each module's
    (r, alpha, scale).  The patterns are indexed once (`PatternIndex`): a lookup does not grow with
    the number of pattern keys, so reading stays linear in layers."""

    def __init__(self, cfg: Mapping[str, Any], path: str | Path):
        self._r = cfg.get("r")
        self._alpha = cfg.get("lora_alpha", 8)  # PEFT's default lora_alpha
        self._rslora = bool(cfg.get("use_rslora"))
        self._ranks = PatternIndex(cfg.get("rank_pattern") or {}, path)
        self._alphas = PatternIndex(cfg.get("alpha_pattern") or {}, path)

    def layer(self, module: str, r_default: int = 8) -> tuple[int, float, float]:
        """(configured r, alpha, scale); `r_default` stands in for a missing "r" (PEFT's is 8)."""
        r = int(self._ranks.value(module, r_default if self._r is None else self._r))
        alpha = float(self._alphas.value(module, self._alpha))
        return r, alpha, peft_scale(alpha, r, self._rslora)


def saved_module_names(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The names a module of full weights may end with: `modules_to_save` and the task's head."""
    listed = tuple(cfg.get("modules_to_save") or ())
    return listed + TASK_HEADS.get(str(cfg.get("task_type") or "").upper(), ())


def full_weight_module(key: str, names: Collection[str], layers: Collection[str]) -> str | None:
    """The module whose full weights `key` (without `base_model.model.`) belongs to, or None.

    PEFT's `_set_trainable` saves a module when its path ends with a listed name (dotted names
    included: "classifier.dense"); the shortest such prefix of the key is the module.  Then the
    base weight of a LoRA layer in the file, then an embedding layer (module docstring)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        module = ".".join(parts[:i])
        if any(module.endswith(name) for name in names):
            return module
    for rule, known in ((_BASE_LAYER, layers), (_EMBEDDING, None)):
        m = rule.match(key)
        if m and (known is None or m["m"] in known):
            return m["m"]
    return None
