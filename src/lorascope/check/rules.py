"""The pre-flight rules: an explicit registry of pure functions `rule(CheckInput) -> list[Finding]`.

Values are read the way the files hold them: a YAML `learning_rate: 1e-4` is the string "1e-4"
(YAML 1.1 needs a dot in a float), so numbers written as strings are read as numbers; booleans are
never numbers (`r: true` is not rank 1).  A missing r or lora_alpha takes PEFT's default (8), as the
PEFT reader does.  Whether lorascope's PEFT reader accepts the config file at all is decided by the
reader itself (`CheckInput.rejected`, filled by `check.inputs`), not by a copy of its rules here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError
from ..types import peft_scale

TASK_PROFILES = ("easy_classification", "hard_reasoning", "generation", "unknown")
PEFT_DEFAULT_R = 8  # LoraConfig.r
PEFT_DEFAULT_ALPHA = 8  # LoraConfig.lora_alpha

# module-name fragments -> kind; covers Llama/Mistral, GPT-2, BERT/RoBERTa, T5, diffusers.
_ATTN = (
    *("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "c_attn"),
    *("attention.output.dense", "to_q", "to_k", "to_v", "to_out", "out_proj", "qkv", "Wqkv"),
    *("q", "k", "v", "o"),
)
_MLP = (
    *("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "mlp.c_proj", "intermediate.dense"),
    *("output.dense", "w1", "w2", "w3", "wi", "wo", "ff.net", "dense_h_to_4h", "dense_4h_to_h"),
)


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "reason": self.reason}


@dataclass(frozen=True)
class CheckInput:
    """What the rules read.  `rejected`: (code, message) when lorascope's PEFT reader refuses the
    adapter config file; `lr_source`: where a learning rate not given directly came from;
    `unknown_task`: a --task name that maps to no task profile."""

    lora: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    dataset_size: int | None = None
    task_profile: str = "unknown"
    rejected: tuple[str, str] | None = None
    lr_source: str | None = None
    unknown_task: str | None = None

    @property
    def r(self) -> Any:
        return self.lora.get("r", PEFT_DEFAULT_R)

    @property
    def lr(self) -> Any:
        return self.training.get("learning_rate")


Rule = Callable[[CheckInput], list[Finding]]


def as_number(value: Any) -> float | None:
    """A finite number from an int, a float or a numeric string ("1e-4"); None for anything else
    (booleans, NaN, ±Inf, integers too large for a float, other strings and types)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def reader_rule(c: CheckInput) -> list[Finding]:
    if c.rejected is None:
        return []
    code, message = c.rejected
    return [Finding("error", code, message, "lorascope's PEFT reader (audit, compress, merge) refuses it")]


def defaults_rule(c: CheckInput) -> list[Finding]:
    unset = [k for k in ("r", "lora_alpha") if k not in c.lora]
    if not unset:
        return []
    return [
        Finding(
            "info",
            "PEFT_DEFAULTS",
            f"{' and '.join(unset)} not set",
            f"PEFT uses r = {PEFT_DEFAULT_R}, lora_alpha = {PEFT_DEFAULT_ALPHA} when they are missing",
        )
    ]


def rank_rule(c: CheckInput) -> list[Finding]:
    r = c.r
    if not positive_int(r):
        return [Finding("error", "BAD_RANK", f"r = {r!r}", "LoRA rank must be a positive integer")]
    out = []
    if c.dataset_size is not None and c.dataset_size < 2000 and r > 16:
        out.append(
            Finding(
                "warning",
                "RANK_VS_DATA",
                f"r = {r} for {c.dataset_size} examples",
                "small datasets rarely use more than r = 8–16; extra rank mostly memorises",
            )
        )
    if c.task_profile == "easy_classification" and r > 16:
        out.append(
            Finding(
                "info",
                "RANK_VS_TASK",
                f"r = {r} for an easy classification task",
                "classification adapters typically reach full accuracy at r ≤ 8; audit afterwards",
            )
        )
    return out


def _rslora(c: CheckInput) -> tuple[bool, list[Finding]]:
    raw = c.lora.get("use_rslora", False)
    if raw is None or isinstance(raw, bool):
        return bool(raw), []
    bad = Finding(
        "warning",
        "RSLORA_NOT_BOOL",
        f"use_rslora = {raw!r}",
        "must be true or false; PEFT treats any non-empty value as true",
    )
    return bool(raw), [bad]


def alpha_rule(c: CheckInput) -> list[Finding]:
    raw = c.lora.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    alpha = None if isinstance(raw, str) else as_number(raw)  # a config's alpha is never a string
    rs, out = _rslora(c)
    if alpha is None or alpha <= 0:
        out.append(Finding("error", "BAD_ALPHA", f"lora_alpha = {raw!r}", "alpha must be a positive number"))
    r = c.r
    if alpha is None or alpha <= 0 or not positive_int(r):
        return out
    scale = peft_scale(alpha, min(r, 1 << 62), rs)  # a rank beyond 2**62 only matters as "huge"
    kind = "alpha/√r (rsLoRA)" if rs else "alpha/r"
    if scale > 4:
        out.append(
            Finding(
                "warning",
                "SCALE_HIGH",
                f"{kind} = {scale:.3g}",
                "scales above ~4 amplify updates; lower alpha or the learning rate",
            )
        )
    elif scale < 0.25:
        out.append(
            Finding(
                "warning",
                "SCALE_LOW",
                f"{kind} = {scale:.3g}",
                "tiny scales need a larger learning rate to move at all",
            )
        )
    if r >= 64 and not rs:
        out.append(
            Finding(
                "info",
                "CONSIDER_RSLORA",
                f"r = {r} without use_rslora",
                "alpha/r shrinks the update as r grows; rsLoRA (alpha/√r) keeps high ranks learning",
            )
        )
    return out


def pattern_rule(c: CheckInput) -> list[Finding]:
    """Every rank_pattern / alpha_pattern key must compile as the regex PEFT builds from it
    (`(.*\\.)?(KEY)$`, peft.utils.other.get_pattern_key).  The reader compiles a key only when a
    module reaches it; with no weights at hand every key may be reached, so every key is compiled."""
    out = []
    for name in ("rank_pattern", "alpha_pattern"):
        patterns = c.lora.get(name)
        if not isinstance(patterns, Mapping):
            continue  # the reader reports a pattern that is not a mapping
        for key in patterns:
            try:
                re.compile(rf"(.*\.)?({key})$")
            except (re.error, RecursionError, OverflowError) as e:
                out.append(
                    Finding(
                        "error",
                        "BAD_PATTERN",
                        f"{name} key {key!r} is not a valid regular expression ({e})",
                        "PEFT matches every key as a regex against module names",
                    )
                )
    return out


def lr_rule(c: CheckInput) -> list[Finding]:
    raw = c.lr
    if raw is None:
        return [Finding("info", "LR_UNKNOWN", "no learning_rate given", "pass training args to check it")]
    lr = as_number(raw)
    if lr is None or lr <= 0:
        return [Finding("error", "BAD_LR", f"learning_rate = {raw!r}", "must be a positive number")]
    what = f"learning_rate = {lr:g}" + (f" ({c.lr_source})" if c.lr_source else "")
    if lr > 1e-2:
        return [Finding("error", "LR_TOO_HIGH", what, "LoRA diverges well before 1e-2")]
    if lr > 1e-3:
        return [Finding("warning", "LR_HIGH", what, "typical LoRA range is 5e-5 – 1e-3")]
    if lr < 1e-6:
        return [Finding("warning", "LR_LOW", what, "adapters barely move below 1e-6")]
    return []


def _kind(name: str) -> str:
    if any(name == f or name.endswith("." + f) or (len(f) > 2 and f in name) for f in _MLP):
        return "mlp"
    if any(name == f or name.endswith("." + f) or (len(f) > 2 and f in name) for f in _ATTN):
        return "attention"
    return "other"


def targets_rule(c: CheckInput) -> list[Finding]:
    targets = c.lora.get("target_modules")
    if targets is None:
        return [
            Finding(
                "info",
                "TARGETS_DEFAULT",
                "target_modules not set",
                "PEFT picks per-architecture defaults (often attention q/v only)",
            )
        ]
    if isinstance(targets, str):
        if targets == "all-linear":
            return []
        return [
            Finding(
                "info",
                "TARGETS_REGEX",
                f"target_modules is the regex {targets!r}",
                "coverage cannot be judged from a regex; audit the trained adapter",
            )
        ]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        return [
            Finding(
                "error",
                "BAD_TARGETS",
                f"target_modules = {_short_repr(targets)}",
                "must be a list of module names or one regex string",
            )
        ]
    if targets and {_kind(t) for t in targets} == {"attention"}:
        return [
            Finding(
                "info",
                "ATTENTION_ONLY",
                f"only attention modules targeted ({', '.join(targets)})",
                "adding MLP projections often helps generation/reasoning tasks",
            )
        ]
    return []


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) < 1000 else type(value).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dropout_rule(c: CheckInput) -> list[Finding]:
    raw = c.lora.get("lora_dropout")
    p = 0.0 if raw is None else as_number(raw)
    if p is None or not 0 <= p < 1:
        return [Finding("error", "BAD_DROPOUT", f"lora_dropout = {raw!r}", "must be a number in [0, 1)")]
    if p > 0.3:
        return [
            Finding("warning", "DROPOUT_HIGH", f"lora_dropout = {p:g}", "above 0.3 slows LoRA learning a lot")
        ]
    return []


def weight_decay_rule(c: CheckInput) -> list[Finding]:
    raw = c.training.get("weight_decay")
    if raw is None:
        return []
    wd = as_number(raw)
    if wd is None or wd < 0:
        return [Finding("error", "BAD_WEIGHT_DECAY", f"weight_decay = {raw!r}", "must be a number ≥ 0")]
    if wd > 0.1:
        return [
            Finding(
                "warning",
                "WEIGHT_DECAY_HIGH",
                f"weight_decay = {wd:g}",
                "decay above 0.1 pulls the low-rank factors toward zero",
            )
        ]
    return []


def task_rule(c: CheckInput) -> list[Finding]:
    if c.unknown_task is None:
        return []
    return [
        Finding(
            "info",
            "TASK_UNKNOWN",
            f"task {c.unknown_task!r} maps to no task profile",
            "task-dependent rules were skipped; pass --task-profile "
            + "|".join(p for p in TASK_PROFILES if p != "unknown"),
        )
    ]


RULES: dict[str, Rule] = {
    "reader": reader_rule,
    "defaults": defaults_rule,
    "rank": rank_rule,
    "alpha": alpha_rule,
    "patterns": pattern_rule,
    "learning_rate": lr_rule,
    "targets": targets_rule,
    "dropout": dropout_rule,
    "weight_decay": weight_decay_rule,
    "task": task_rule,
}


def _reader_repeats(inp: CheckInput) -> bool:
    """True when the reader's BAD_CONFIG only repeats BAD_RANK / BAD_ALPHA: the reader stops at its
    first problem and checks r, then lora_alpha (a finite number), before anything else."""
    if not positive_int(inp.r):
        return True
    raw = inp.lora.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    return isinstance(raw, str) or as_number(raw) is None


def check_config(inp: CheckInput) -> list[Finding]:
    if inp.task_profile not in TASK_PROFILES:
        raise InvalidArgumentError(f"task profile must be one of {', '.join(TASK_PROFILES)}")
    out: list[Finding] = []
    for rule in RULES.values():
        out.extend(rule(inp))
    if inp.rejected and inp.rejected[0] == "BAD_CONFIG" and _reader_repeats(inp):
        out = [f for f in out if f.code != "BAD_CONFIG"]
    return out
