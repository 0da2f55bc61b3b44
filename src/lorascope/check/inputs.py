"""Where `check` gets its input: config files, training directories, task names.

* An adapter config is read as JSON (YAML when the name ends in .yaml/.yml); a file lorascope's
  PEFT reader would read (a JSON adapter config) is also handed to that reader
  (`formats.peft.load_config`), and its refusal becomes `CheckInput.rejected`.
* A training directory holds `training_args.json` (or .yaml/.yml: what `args.to_json_string()` or
  `args.to_dict()` saves) and/or `trainer_state.json` (written by `Trainer.save_state()` and in every
  `checkpoint-N/`).  `training_args.bin` is a torch pickle and is never unpickled.  The trainer
  state has no configured learning rate; when the args give none, the peak `learning_rate` logged
  in its `log_history` stands in for it, and the finding says so.
* A task is a task profile or a dataset name mapped to one (`TASK_NAMES`: GLUE and sentiment sets
  are easy classification, math word problems hard reasoning, instruction and summarisation sets
  generation).  Unknown names give the profile "unknown" and an info finding.

Unreadable files (not UTF-8, not JSON/YAML, nested too deeply, integers too long to convert, not a
mapping) are one-line `FormatError`s: exit 2, as any input lorascope cannot read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import FormatError, InputNotFoundError, LorascopeError, UnsupportedError
from ..files import read_mapping
from ..formats.peft import load_config
from .rules import TASK_PROFILES, as_number

CONFIG_NAMES = ("adapter_config.json", "adapter_config.yaml", "adapter_config.yml")
ARGS_NAMES = ("training_args.json", "training_args.yaml", "training_args.yml")
STATE_NAME = "trainer_state.json"

_EASY = "sst2 sst-2 sst cola mnli mnli_matched mnli_mismatched mrpc qnli qqp rte wnli stsb imdb"
_EASY += " rotten_tomatoes yelp_polarity yelp_review_full ag_news emotion tweet_eval amazon_polarity"
_EASY += " dbpedia_14 trec boolq snli"
_HARD = "gsm8k svamp math aqua aqua_rat asdiv multiarith mathqa strategyqa arc arc_challenge"
_GEN = "alpaca dolly databricks-dolly-15k oasst1 ultrachat wikitext xsum cnn_dailymail samsum squad"
TASK_NAMES: dict[str, str] = {
    **{n: "easy_classification" for n in _EASY.split()},
    **{n: "hard_reasoning" for n in _HARD.split()},
    **{n: "generation" for n in _GEN.split()},
}


def resolve_task(name: str) -> tuple[str, bool]:
    """(task profile, known) for a profile name or a dataset name ("sst2", "glue/sst2", "GSM8K")."""
    if name in TASK_PROFILES:
        return name, True
    key = re.split(r"[/:]", name.strip().lower())[-1]
    profile = TASK_NAMES.get(key)
    return (profile, True) if profile else ("unknown", False)


def load_mapping(path: str | Path) -> dict[str, Any]:
    """A JSON/YAML file (a directory: its adapter config) -> its top-level mapping."""
    p = Path(path)
    if p.is_dir():
        p = _first_present(p, CONFIG_NAMES) or p / CONFIG_NAMES[0]
    if p.suffix == ".bin" and p.is_file():
        raise FormatError(
            "is a torch pickle and is not unpickled; save args.to_json_string() to a .json", path=p
        )
    return read_mapping(p, "config file")


def config_path(path: str | Path) -> Path:
    p = Path(path)
    return (_first_present(p, CONFIG_NAMES) or p / CONFIG_NAMES[0]) if p.is_dir() else p


def reader_verdict(path: Path) -> tuple[str, str] | None:
    """(code, message) when lorascope's PEFT reader refuses this adapter config; None when it reads
    it or would never read it (a YAML file)."""
    if path.suffix != ".json":
        return None
    try:
        load_config(path)
    except LorascopeError as e:
        return ("NOT_LORA" if isinstance(e, UnsupportedError) else "BAD_CONFIG"), str(e)
    except (OverflowError, ValueError, RecursionError, TypeError) as e:
        return "BAD_CONFIG", f"{path}: holds a value the reader cannot use ({type(e).__name__})"
    return None


def training_from_dir(directory: str | Path) -> tuple[dict[str, Any], str | None]:
    """(training args, where a learning rate not in them came from) for a training directory."""
    d = Path(directory)
    if not d.is_dir():
        raise InputNotFoundError("training directory not found", path=d)
    args_file = _first_present(d, ARGS_NAMES)
    state_file = _state_file(d)
    if args_file is None and state_file is None:
        bin_note = " (training_args.bin is a torch pickle and is not unpickled)"
        raise FormatError(
            f"no {', '.join(ARGS_NAMES)} or {STATE_NAME}"
            + (bin_note if (d / "training_args.bin").is_file() else "")
            + "; save args.to_json_string() as training_args.json",
            path=d,
        )
    training = load_mapping(args_file) if args_file else {}
    if training.get("learning_rate") is None and state_file is not None:
        peak = _peak_logged_lr(load_mapping(state_file))
        if peak is not None:
            training["learning_rate"] = peak
            return training, f"peak logged in {state_file.relative_to(d)}"
    return training, None


def _peak_logged_lr(state: dict[str, Any]) -> float | None:
    history = state.get("log_history")
    if not isinstance(history, list):
        return None
    rates = [as_number(h.get("learning_rate")) for h in history if isinstance(h, dict)]
    finite = [r for r in rates if r is not None]
    return max(finite) if finite else None


def _state_file(d: Path) -> Path | None:
    """trainer_state.json in the directory, else in its latest checkpoint-N/."""
    if (d / STATE_NAME).is_file():
        return d / STATE_NAME
    checkpoints = [
        (int(c.name.split("-", 1)[1]), c)
        for c in d.glob("checkpoint-*")
        if c.name.split("-", 1)[1].isdigit() and (c / STATE_NAME).is_file()
    ]
    return max(checkpoints)[1] / STATE_NAME if checkpoints else None


def _first_present(d: Path, names: tuple[str, ...]) -> Path | None:
    return next((d / n for n in names if (d / n).is_file()), None)


__all__ = [
    "TASK_NAMES",
    "config_path",
    "load_mapping",
    "reader_verdict",
    "resolve_task",
    "training_from_dir",
]
