"""`lorascope check [CONFIG] [--training-args FILE | --training-dir DIR] [flags]`: pre-flight findings.

Gradience's spellings are accepted: `--peft FILE` / `--peft-dir DIR` for CONFIG, `--training FILE`
for `--training-args`, `--training-dir DIR`, `--task NAME` (a dataset name such as sst2 or gsm8k,
mapped to a task profile), `--task-profile`, and the overrides `--r`, `--alpha`, `--targets`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..check import TASK_PROFILES, CheckInput, check_config
from ..check.inputs import config_path, load_mapping, reader_verdict, resolve_task, training_from_dir
from ..errors import InvalidArgumentError
from ..textsafe import clean
from ._output import emit


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="adapter_config.json/.yaml (or a directory holding one)")
    p.add_argument("--peft", metavar="FILE", help="same as CONFIG (Gradience spelling)")
    p.add_argument("--peft-dir", metavar="DIR", help="same as CONFIG: a PEFT output directory")
    p.add_argument(
        "--training-args",
        "--training",
        dest="training_args",
        metavar="FILE",
        help="training args as JSON or YAML (TrainingArguments.to_json_string())",
    )
    p.add_argument(
        "--training-dir",
        metavar="DIR",
        help="a training output directory: training_args.json/.yaml and trainer_state.json when present",
    )
    p.add_argument(
        "--lr", "--learning-rate", dest="lr", type=float, help="learning rate (overrides the file)"
    )
    p.add_argument("--weight-decay", type=float, help="weight decay (overrides the file)")
    p.add_argument("--r", type=int, metavar="N", help="LoRA rank (overrides the config)")
    p.add_argument("--alpha", type=float, metavar="X", help="lora_alpha (overrides the config)")
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="MODULE",
        help="target_modules, space- and/or comma-separated (overrides the config)",
    )
    p.add_argument("--dataset-size", type=int, help="number of training examples")
    p.add_argument(
        "--task",
        metavar="TASK",
        help=f"a task profile ({', '.join(TASK_PROFILES)}) or a dataset name mapped to one "
        "(sst2, mnli, gsm8k, alpaca, ...)",
    )
    p.add_argument("--task-profile", choices=TASK_PROFILES, help="the task profile, whatever --task is")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema lorascope.check/v1)")
    p.set_defaults(run=run)


def _one(args: argparse.Namespace, names: tuple[str, ...], what: str) -> str | None:
    given = [(n, getattr(args, n)) for n in names if getattr(args, n) is not None]
    if len({v for _, v in given}) > 1:
        flags = " and ".join("CONFIG" if n == "config" else "--" + n.replace("_", "-") for n, _ in given)
        raise InvalidArgumentError(f"{flags} both name the {what}; give one")
    return given[0][1] if given else None


def _lora(args: argparse.Namespace) -> tuple[dict[str, Any], tuple[str, str] | None]:
    source = _one(args, ("config", "peft", "peft_dir"), "adapter config")
    if source is None and args.r is None:
        raise InvalidArgumentError("check needs an adapter config (CONFIG, --peft or --peft-dir) or --r")
    lora = load_mapping(source) if source is not None else {}
    rejected = reader_verdict(config_path(source)) if source is not None else None
    if args.r is not None:
        lora["r"] = args.r
    if args.alpha is not None:
        lora["lora_alpha"] = args.alpha
    if args.targets:
        lora["target_modules"] = [t for item in args.targets for t in item.split(",") if t.strip()]
    return lora, rejected


def _training(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    if args.training_args and args.training_dir:
        raise InvalidArgumentError("--training-args and --training-dir both name the training args; give one")
    source = None
    if args.training_dir:
        training, source = training_from_dir(args.training_dir)
    else:
        training = load_mapping(args.training_args) if args.training_args else {}
    if args.lr is not None:
        training["learning_rate"], source = args.lr, None
    if args.weight_decay is not None:
        training["weight_decay"] = args.weight_decay
    return training, source


def _profile(args: argparse.Namespace) -> tuple[str, str | None]:
    """(task profile, the --task name when it maps to none)."""
    if args.task is None:
        return args.task_profile or "unknown", None
    profile, known = resolve_task(args.task)
    if args.task_profile is not None:
        if args.task in TASK_PROFILES and args.task != args.task_profile:
            raise InvalidArgumentError(f"--task {args.task} and --task-profile {args.task_profile} disagree")
        return args.task_profile, None
    return profile, None if known else args.task


def run(args: argparse.Namespace) -> int:
    if args.dataset_size is not None and args.dataset_size < 0:
        raise InvalidArgumentError("--dataset-size must be ≥ 0")
    lora, rejected = _lora(args)
    training, lr_source = _training(args)
    profile, unknown_task = _profile(args)
    inp = CheckInput(lora, training, args.dataset_size, profile, rejected, lr_source, unknown_task)
    findings = check_config(inp)
    if args.json:
        doc = {
            "schema": "lorascope.check/v1",
            "task_profile": profile,
            "findings": [f.to_dict() for f in findings],
        }
        text = json.dumps(doc, indent=2) + "\n"
    else:
        lines = [f"{f.severity.upper():<8} {f.code:<18} {clean(f.message)}: {f.reason}" for f in findings]
        text = "\n".join(lines or ["no findings"]) + "\n"
    emit(text)
    return 1 if any(f.severity == "error" for f in findings) else 0
