"""`check(adapter_config, training_args)`: pre-flight findings before any compute is spent.

Each finding has a severity (info | warning | error), a code, a message and a reason.  Rules are an
explicit registry of pure functions `rule(CheckInput) -> list[Finding]`.  Training args come from
JSON or YAML (never `training_args.bin`: that is a torch pickle and is not unpickled).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AdapterNotFoundError, FormatError, InvalidArgumentError
from .types import peft_scale

TASK_PROFILES = ("easy_classification", "hard_reasoning", "generation", "unknown")
# module-name fragments -> kind; covers Llama/Mistral, GPT-2, BERT/RoBERTa, T5, diffusers.
_ATTN = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "query",
    "key",
    "value",
    "c_attn",
    "attention.output.dense",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "out_proj",
    "qkv",
    "Wqkv",
    "q",
    "k",
    "v",
    "o",
)
_MLP = (
    "gate_proj",
    "up_proj",
    "down_proj",
    "fc1",
    "fc2",
    "c_fc",
    "mlp.c_proj",
    "intermediate.dense",
    "output.dense",
    "w1",
    "w2",
    "w3",
    "wi",
    "wo",
    "ff.net",
    "dense_h_to_4h",
    "dense_4h_to_h",
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
    lora: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    dataset_size: int | None = None
    task_profile: str = "unknown"

    @property
    def r(self) -> int | None:
        return self.lora.get("r")

    @property
    def lr(self) -> float | None:
        return self.training.get("learning_rate")


Rule = Callable[[CheckInput], list[Finding]]


def rank_rule(c: CheckInput) -> list[Finding]:
    r = c.r
    if not isinstance(r, int) or r < 1:
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


def alpha_rule(c: CheckInput) -> list[Finding]:
    r, alpha, rs = c.r, c.lora.get("lora_alpha"), bool(c.lora.get("use_rslora"))
    if not isinstance(r, int) or r < 1:
        return []
    if not isinstance(alpha, (int, float)) or alpha <= 0:
        return [Finding("error", "BAD_ALPHA", f"lora_alpha = {alpha!r}", "alpha must be a positive number")]
    scale = peft_scale(alpha, r, rs)
    kind = "alpha/√r (rsLoRA)" if rs else "alpha/r"
    out = []
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


def lr_rule(c: CheckInput) -> list[Finding]:
    lr = c.lr
    if lr is None:
        return [Finding("info", "LR_UNKNOWN", "no learning_rate given", "pass training args to check it")]
    if not isinstance(lr, (int, float)) or lr <= 0:
        return [Finding("error", "BAD_LR", f"learning_rate = {lr!r}", "must be a positive number")]
    if lr > 1e-2:
        return [Finding("error", "LR_TOO_HIGH", f"learning_rate = {lr:g}", "LoRA diverges well before 1e-2")]
    if lr > 1e-3:
        return [Finding("warning", "LR_HIGH", f"learning_rate = {lr:g}", "typical LoRA range is 5e-5 – 1e-3")]
    if lr < 1e-6:
        return [Finding("warning", "LR_LOW", f"learning_rate = {lr:g}", "adapters barely move below 1e-6")]
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
    kinds = {_kind(str(t)) for t in targets}
    if kinds == {"attention"}:
        return [
            Finding(
                "info",
                "ATTENTION_ONLY",
                f"only attention modules targeted ({', '.join(map(str, targets))})",
                "adding MLP projections often helps generation/reasoning tasks",
            )
        ]
    return []


def dropout_rule(c: CheckInput) -> list[Finding]:
    p = c.lora.get("lora_dropout", 0.0) or 0.0
    if not 0 <= p < 1:
        return [Finding("error", "BAD_DROPOUT", f"lora_dropout = {p}", "must be in [0, 1)")]
    if p > 0.3:
        return [
            Finding("warning", "DROPOUT_HIGH", f"lora_dropout = {p}", "above 0.3 slows LoRA learning a lot")
        ]
    return []


def weight_decay_rule(c: CheckInput) -> list[Finding]:
    wd = c.training.get("weight_decay")
    if isinstance(wd, (int, float)) and wd > 0.1:
        return [
            Finding(
                "warning",
                "WEIGHT_DECAY_HIGH",
                f"weight_decay = {wd}",
                "decay above 0.1 pulls the low-rank factors toward zero",
            )
        ]
    return []


RULES: dict[str, Rule] = {
    "rank": rank_rule,
    "alpha": alpha_rule,
    "learning_rate": lr_rule,
    "targets": targets_rule,
    "dropout": dropout_rule,
    "weight_decay": weight_decay_rule,
}


def load_mapping(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "adapter_config.json"
    if not p.is_file():
        raise AdapterNotFoundError("file not found", path=p)
    if p.suffix == ".bin":
        raise FormatError(
            "is a torch pickle and is not unpickled; save args.to_json_string() to a .json", path=p
        )
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json/yaml syntax errors
        raise FormatError(f"cannot parse: {str(exc).splitlines()[0]}", path=p) from None
    if not isinstance(data, dict):
        raise FormatError("expected a mapping at the top level", path=p)
    return data


def check_config(inp: CheckInput) -> list[Finding]:
    if inp.task_profile not in TASK_PROFILES:
        raise InvalidArgumentError(f"task profile must be one of {', '.join(TASK_PROFILES)}")
    out: list[Finding] = []
    for rule in RULES.values():
        out.extend(rule(inp))
    return out
