"""`check_config(CheckInput)`: pre-flight findings before any compute is spent.

Each finding has a severity (info | warning | error), a code, a message and a reason.  The rules
(`rules.RULES`) are pure functions of a `CheckInput`; `inputs` builds one from files: adapter
configs (handed to lorascope's PEFT reader too, so `check` refuses what `audit` refuses), training
args as JSON or YAML, training directories, task names.  `training_args.bin` is a torch pickle and
is never unpickled.  docs/telemetry.md has the table of codes.
"""

from __future__ import annotations

from .rules import RULES, TASK_PROFILES, CheckInput, Finding, check_config

__all__ = ["RULES", "TASK_PROFILES", "CheckInput", "Finding", "check_config"]
