"""`lorascope check ADAPTER_CONFIG [--training-args FILE] [flags]`: pre-flight config findings."""

from __future__ import annotations

import argparse
import json

from ..check import TASK_PROFILES, CheckInput, check_config, load_mapping
from ._output import emit


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="adapter_config.json (or a directory holding one)")
    p.add_argument(
        "--training-args", help="training args as JSON or YAML (TrainingArguments.to_json_string())"
    )
    p.add_argument(
        "--lr", "--learning-rate", dest="lr", type=float, help="learning rate (overrides the file)"
    )
    p.add_argument("--weight-decay", type=float, help="weight decay (overrides the file)")
    p.add_argument("--dataset-size", type=int, help="number of training examples")
    p.add_argument("--task", default="unknown", choices=TASK_PROFILES, help="task profile")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema lorascope.check/v1)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    lora = load_mapping(args.config)
    training = load_mapping(args.training_args) if args.training_args else {}
    if args.lr is not None:
        training["learning_rate"] = args.lr
    if args.weight_decay is not None:
        training["weight_decay"] = args.weight_decay
    findings = check_config(CheckInput(lora, training, args.dataset_size, args.task))
    if args.json:
        text = json.dumps(
            {"schema": "lorascope.check/v1", "findings": [f.to_dict() for f in findings]}, indent=2
        )
        text += "\n"
    else:
        lines = [f"{f.severity.upper():<8} {f.code:<18} {f.message}: {f.reason}" for f in findings]
        text = "\n".join(lines or ["no findings"]) + "\n"
    emit(text)
    return 1 if any(f.severity == "error" for f in findings) else 0
