"""Bench configuration: one YAML/JSON file (or a preset), validated in full before any work starts.

Contract: `load_config(path_or_none, preset=...)` returns a `BenchConfig` whose sections are plain
dicts with every key present (defaults filled in).  An unknown key, a wrong type or an out-of-range
value raises `InvalidArgumentError` naming the file and the dotted key (`train.steps`), never a
traceback and never a silently ignored key.  `config_hash` is the SHA-256 of the resolved config in
canonical JSON: a resumed bench must have the same hash as the one it resumes.

Left out on purpose: environment-variable interpolation and config inheritance (presets are whole
files; copy one and edit it).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AdapterNotFoundError, InvalidArgumentError
from ..files import read_text
from ..rounding import Rounding

SECTIONS = ("model", "task", "train", "lora", "compression", "policy", "seeds")
VARIANTS = ("uniform_median", "uniform_p90", "per_layer", "energy", "budget", "truncate", "truncate_tune")
RETRAINED = ("uniform_median", "uniform_p90", "per_layer", "energy", "budget")
CONTROLS = ("truncate", "truncate_tune")


def _int(lo: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo
        return None if ok else f"must be an integer ≥ {lo}"

    return check


def _num(lo: float, hi: float, *, open_lo: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = ok and (v > lo if open_lo else v >= lo) and v <= hi
        return None if ok else f"must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]"

    return check


def _str(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v:
            return "must be a non-empty string"
        return None if not choices or v in choices else f"must be one of {', '.join(choices)}"

    return check


def _opt(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else check(v)


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _str_list(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)
    return None if ok else "must be a non-empty list of strings"


def _int_list(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return None if ok and all(x >= 0 for x in v) else "must be a non-empty list of integers ≥ 0"


def _rounding(v: Any) -> str | None:
    try:
        Rounding.parse(v) if isinstance(v, str) else Rounding.parse("?")
    except InvalidArgumentError:
        return "must be 'none', 'pow2' or 'multiple:N'"
    return None


def _variants(v: Any) -> str | None:
    if _str_list(v) is not None or len(set(v)) != len(v):
        return "must be a non-empty list of distinct variant names"
    bad = [x for x in v if x not in VARIANTS]
    return f"unknown variant {bad[0]!r}; known: {', '.join(VARIANTS)}" if bad else None


def _ranks(v: Any) -> str | None:
    if _int_list(v) is not None or 0 in v:
        return "must be a non-empty list of ranks ≥ 1"
    return None


def _model_init(v: Any) -> str | None:
    if not isinstance(v, Mapping):
        return "must be a mapping of BertConfig fields (hidden_size, num_hidden_layers, ...)"
    ok = all(isinstance(k, str) and isinstance(x, int) and x >= 1 for k, x in v.items())
    return None if ok else "values must be integers ≥ 1"


# section -> key -> (default, check)
SCHEMA: dict[str, dict[str, tuple[Any, Callable[[Any], str | None]]]] = {
    "model": {
        "path": (None, _opt(_str())),  # a local Hugging Face model folder
        "name": (None, _opt(_str())),  # "minilm" (offline asset) or a hub id already in the local cache
        "dtype": ("float32", _str("float32", "bfloat16", "float16")),
        "random_init": (None, _opt(_model_init)),  # build a random BERT of this shape (tests, --smoke)
        "init_seed": (0, _int(0)),
    },
    "task": {
        "kind": ("classification", _str("classification", "generation")),
        "source": ("file", _str("rotten_tomatoes", "file", "datasets")),
        "path": (None, _opt(_str())),  # CSV / JSONL / Parquet (source: file)
        "test_path": (None, _opt(_str())),  # optional held-out file; else a seeded split of `path`
        "dataset": (None, _opt(_str())),  # source: datasets
        "dataset_config": (None, _opt(_str())),
        "train_split": ("train", _str()),
        "test_split": ("test", _str()),
        "text_column": ("text", _str()),
        "label_column": ("label", _str()),  # classification label / generation answer
        "rt_task": ("sentiment", _str("sentiment", "source", "sentiment_flip")),
        "test_fraction": (0.15, _num(0.0, 0.9, open_lo=True)),
        "split_seed": (0, _int(0)),
        "max_train": (None, _opt(_int(1))),
        "max_eval": (None, _opt(_int(1))),
        "max_new_tokens": (256, _int(1)),
        "prompt_template": ("Question: {text}\nAnswer:", _str()),
    },
    "train": {
        "steps": (300, _int(1)),
        "lr": (5e-4, _num(0.0, 1.0, open_lo=True)),
        "batch_size": (16, _int(1)),
        "max_length": (64, _int(4)),
        "eval_interval": (0, _int(0)),  # steps between in-training evaluations (0: none)
        "warmup_ratio": (0.1, _num(0.0, 1.0)),
        "weight_decay": (0.01, _num(0.0, 1.0)),
        "grad_clip": (1.0, _num(0.0, 1e6)),
        "eval_batch_size": (128, _int(1)),
        "threads": (None, _opt(_int(1))),
    },
    "lora": {
        "probe_r": (64, _int(1)),
        "alpha": (None, _opt(_num(0.0, 1e6, open_lo=True))),  # probe lora_alpha; default 2·probe_r
        "dropout": (0.05, _num(0.0, 0.9)),
        "target_modules": (["query", "key", "value"], _str_list),
        "rslora": (False, _bool),
        # how a variant at rank k sets lora_alpha: keep_scale (alpha/r, or alpha/√r with rsLoRA, equal
        # to the probe's in every layer) or keep_alpha (the probe's lora_alpha, so the scale grows as k
        # shrinks)
        "variant_alpha": ("keep_scale", _str("keep_scale", "keep_alpha")),
    },
    "compression": {
        "variants": (list(VARIANTS), _variants),
        "allowed_ranks": (None, _opt(_ranks)),  # each planned rank snaps up to one of these
        "rounding": ("multiple:4", _rounding),
        "energy": (0.9, _num(0.0, 1.0, open_lo=True)),  # the audit threshold and the energy variant's τ
        "budget_ratio": (0.5, _num(0.0, 1.0, open_lo=True)),
        "control_plan": ("uniform_median", _str(*RETRAINED)),  # ranks the truncate controls use
        "tune_steps": (None, _opt(_int(1))),  # truncate_tune post-tune steps; default steps // 5
        "max_candidates": (None, _opt(_int(0))),  # at most N retrained rank plans (in variant order)
    },
    "policy": {
        "pass_rate_min": (0.67, _num(0.0, 1.0)),
        "worst_delta_min": (-0.025, _num(-1.0, 1.0)),
        "tolerance": (-0.025, _num(-1.0, 1.0)),  # a seed PASSes iff Δ ≥ tolerance
        "probe_min_accuracy": (0.70, _num(0.0, 1.0)),  # probe-quality gate: below it, UNDERTRAINED
    },
}
TOP_DEFAULTS: dict[str, Any] = {"seeds": [42, 123, 456]}
SMOKE_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@dataclass(frozen=True)
class BenchConfig:
    raw: dict[str, Any]  # every section, every key, defaults filled in
    source: str  # the file or "preset:NAME"

    def __getitem__(self, section: str) -> Any:
        return self.raw[section]

    @property
    def seeds(self) -> list[int]:
        return list(self.raw["seeds"])

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)


def config_hash(raw: Mapping[str, Any]) -> str:
    """Over everything but `seeds`: seeds are independent runs of one protocol, so a bench can be
    resumed with more (or fewer) seeds and keeps the seeds it finished."""
    body = {k: v for k, v in raw.items() if k != "seeds"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file as a dict (YAML only when pyyaml is installed; JSON always works)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterNotFoundError("config file not found; give a YAML/JSON file or --preset", path=path)
    text = read_text(path)  # not UTF-8: one line, like every other file lorascope reads
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except ImportError:
        raise InvalidArgumentError(
            "YAML configs need pyyaml (pip install pyyaml); or use JSON", path=path
        ) from None
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: say where, in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidArgumentError(f"not valid YAML/JSON: {first}", path=path) from None
    if not isinstance(doc, dict):
        raise InvalidArgumentError("the config must be a mapping of sections", path=path)
    return doc


def validate(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Fill defaults and check every key; errors name `where` and the dotted key."""

    def fail(key: str, msg: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"key {key}: {msg}", path=where)

    unknown = [k for k in doc if k not in SECTIONS]
    if unknown:
        raise fail(str(unknown[0]), f"unknown section; known sections: {', '.join(SECTIONS)}")
    out: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        given = doc.get(section) or {}
        if not isinstance(given, Mapping):
            raise fail(section, "must be a mapping")
        bad = [k for k in given if k not in keys]
        if bad:
            raise fail(f"{section}.{bad[0]}", f"unknown key; known keys: {', '.join(keys)}")
        out[section] = {}
        for key, (default, check) in keys.items():
            value = copy.deepcopy(given.get(key, default))
            problem = check(value)
            if problem:
                raise fail(f"{section}.{key}", f"{problem}, got {value!r}")
            out[section][key] = value
    seeds = doc.get("seeds", TOP_DEFAULTS["seeds"])
    if _int_list(seeds) is not None or len(set(seeds)) != len(seeds):
        raise fail("seeds", f"must be a non-empty list of distinct integers ≥ 0, got {seeds!r}")
    out["seeds"] = list(seeds)
    _cross_checks(out, fail)
    return out


def _cross_checks(cfg: dict[str, Any], fail: Callable[[str, str], InvalidArgumentError]) -> None:
    model, task = cfg["model"], cfg["task"]
    if sum(x is not None for x in (model["path"], model["name"])) != 1 and model["random_init"] is None:
        raise fail("model", "give exactly one of model.path (a local folder) or model.name")
    if task["source"] == "file" and task["path"] is None:
        raise fail("task.path", "source 'file' needs a CSV, JSONL or Parquet path")
    if task["source"] == "datasets" and task["dataset"] is None:
        raise fail("task.dataset", "source 'datasets' needs a dataset name or local folder")
    if task["kind"] == "generation" and model["random_init"] is not None:
        raise fail("model.random_init", "random models are BERT classifiers; generation needs a model")
    if task["kind"] == "generation" and task["source"] == "rotten_tomatoes":
        raise fail("task.source", "rotten_tomatoes is a classification task")
    if "{text}" not in task["prompt_template"]:
        raise fail("task.prompt_template", "must contain {text}")
    if cfg["lora"]["alpha"] is None:
        cfg["lora"]["alpha"] = float(2 * cfg["lora"]["probe_r"])
    allowed = cfg["compression"]["allowed_ranks"]
    if allowed is not None:
        cfg["compression"]["allowed_ranks"] = sorted(set(allowed))


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative data/model paths in a config file are relative to the file's folder."""
    for section, key in (("model", "path"), ("task", "path"), ("task", "test_path")):
        value = raw[section][key]
        if value is not None and not Path(value).expanduser().is_absolute():
            raw[section][key] = str((base / value).resolve())


def load_config(path: str | Path | None, *, preset: str | None = None) -> BenchConfig:
    if (path is None) == (preset is None):
        raise InvalidArgumentError("give a CONFIG file or --preset NAME (one of them)")
    if preset is not None:
        from .presets import PRESETS

        if preset not in PRESETS:
            raise InvalidArgumentError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return BenchConfig(validate(PRESETS[preset], f"preset:{preset}"), f"preset:{preset}")
    doc = read_mapping(path)  # type: ignore[arg-type]
    raw = validate(doc, str(path))
    resolve_paths(raw, Path(path).resolve().parent)  # type: ignore[arg-type]
    return BenchConfig(raw, str(path))


def with_overrides(
    cfg: BenchConfig,
    *,
    seeds: list[int] | None = None,
    smoke: bool = False,
    max_candidates: int | None = None,
) -> BenchConfig:
    """Command-line overrides.  --smoke: a tiny random BERT (the config's tokenizer), 24 steps, r=8,
    at most 512 training and 256 held-out examples, two seeds unless --seeds is given; a quick end to
    end check of the whole pipeline, not a measurement."""
    raw = cfg.to_dict()
    if smoke:
        if raw["task"]["kind"] != "classification":
            raise InvalidArgumentError("--smoke runs classification configs only (a random BERT)")
        raw["model"]["random_init"] = raw["model"]["random_init"] or dict(SMOKE_MODEL)
        raw["train"].update(steps=min(raw["train"]["steps"], 24), eval_interval=0, max_length=32)
        raw["lora"].update(
            probe_r=min(raw["lora"]["probe_r"], 8), alpha=float(2 * min(raw["lora"]["probe_r"], 8))
        )
        raw["task"]["max_train"] = min(raw["task"]["max_train"] or 512, 512)
        raw["task"]["max_eval"] = min(raw["task"]["max_eval"] or 256, 256)
        raw["compression"]["tune_steps"] = 4
        raw["policy"]["probe_min_accuracy"] = (
            0.0  # a random BERT in 24 steps: check the pipeline, not quality
        )
        raw["seeds"] = raw["seeds"][:2]
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise InvalidArgumentError(f"--seeds must be distinct integers ≥ 0, got {seeds}")
        raw["seeds"] = list(seeds)
    if max_candidates is not None:
        if max_candidates < 0:
            raise InvalidArgumentError(f"--max-candidates must be ≥ 0, got {max_candidates}")
        raw["compression"]["max_candidates"] = max_candidates
    return BenchConfig(raw, cfg.source)
