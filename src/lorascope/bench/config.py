"""Bench configuration: one YAML/JSON file (or a preset), validated in full before any work starts.

Contract: `load_config(path_or_none, preset=...)` returns a frozen `BenchConfig` of typed sections
(`cfg.train.steps`, `cfg.compression.variants`), every key present (defaults filled in), lists
frozen to tuples.  Each section is a frozen dataclass declared with `lorascope.validate`
(`setting(default, check)`), so the user's file is checked the same way, with the same wording, as
every other file lorascope reads: an unknown key, a wrong type or an out-of-range value is one
`ConfigError` "FILE: key train.steps: must be an integer ≥ 1, got 0", never a traceback and never a
silently ignored key.  `config_hash` is the SHA-256 of the resolved config in canonical JSON: a
resumed bench must have the same hash as the one it resumes.

Left out on purpose: environment-variable interpolation and config inheritance (presets are whole
files; copy one and edit it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputNotFoundError, InvalidArgumentError
from ..files import read_mapping
from ..rounding import Rounding
from ..validate import (
    boolean,
    build,
    integer,
    list_of,
    mapping_of,
    number,
    optional,
    section,
    setting,
    string,
    to_dict,
)

VARIANTS = ("uniform_median", "uniform_p90", "per_layer", "energy", "budget", "truncate", "truncate_tune")
RETRAINED = ("uniform_median", "uniform_p90", "per_layer", "energy", "budget")
CONTROLS = ("truncate", "truncate_tune")
SMOKE_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
CONFIG_HINT = "give a YAML/JSON bench config (docs/bench.md), or --preset minilm-rt"


def _rounding(v: Any) -> str | None:
    problem = "must be 'none', 'pow2' or 'multiple:N'"
    if not isinstance(v, str):
        return problem
    try:
        Rounding.parse(v)
    except InvalidArgumentError:
        return problem
    return None


def _variants(v: Any) -> str | None:
    if list_of(string(), distinct=True)(v) is not None:
        return "must be a non-empty list of distinct variant names"
    bad = [x for x in v if x not in VARIANTS]
    return f"unknown variant {bad[0]!r}; known: {', '.join(VARIANTS)}" if bad else None


_STRINGS = list_of(string(), what="strings")
_RANKS = list_of(integer(1), what="ranks ≥ 1")
_SEEDS = list_of(integer(0), what="integers ≥ 0", distinct=True)
_SHAPE = mapping_of(integer(1), what="integers ≥ 1 (BertConfig fields: hidden_size, num_hidden_layers, ...)")


@dataclass(frozen=True)
class ModelSection:
    path: str | None = setting(None, optional(string()))  # a local Hugging Face model folder
    name: str | None = setting(None, optional(string()))  # "minilm" (offline asset) or a cached hub id
    dtype: str = setting("float32", string("float32", "bfloat16", "float16"))
    random_init: dict[str, int] | None = setting(None, optional(_SHAPE))  # a random BERT of this shape
    init_seed: int = setting(0, integer(0))

    def label(self) -> str:
        """How reports name the model: its folder or name, or the random BERT's shape."""
        if self.random_init is not None:
            shape = self.random_init
            layers, hidden = shape.get("num_hidden_layers", "?"), shape.get("hidden_size", "?")
            return f"random BERT ({layers} layers, hidden {hidden}; not pretrained)"
        return self.path or self.name or "?"


@dataclass(frozen=True)
class TaskSection:
    kind: str = setting("classification", string("classification", "generation"))
    source: str = setting("file", string("rotten_tomatoes", "file", "datasets"))
    path: str | None = setting(None, optional(string()))  # CSV / JSONL / Parquet (source: file)
    test_path: str | None = setting(None, optional(string()))  # held-out file; else a seeded split
    dataset: str | None = setting(None, optional(string()))  # source: datasets
    dataset_config: str | None = setting(None, optional(string()))
    train_split: str = setting("train", string())
    test_split: str = setting("test", string())
    text_column: str = setting("text", string())
    label_column: str = setting("label", string())  # classification label / generation answer
    rt_task: str = setting("sentiment", string("sentiment", "source", "sentiment_flip"))
    test_fraction: float = setting(0.15, number(0.0, 0.9, open_lo=True))
    split_seed: int = setting(0, integer(0))
    max_train: int | None = setting(None, optional(integer(1)))
    max_eval: int | None = setting(None, optional(integer(1)))
    max_new_tokens: int = setting(256, integer(1))
    prompt_template: str = setting("Question: {text}\nAnswer:", string())


@dataclass(frozen=True)
class TrainSection:
    steps: int = setting(300, integer(1))
    lr: float = setting(5e-4, number(0.0, 1.0, open_lo=True))
    batch_size: int = setting(16, integer(1))
    max_length: int = setting(64, integer(4))
    eval_interval: int = setting(0, integer(0))  # steps between in-training evaluations (0: none)
    warmup_ratio: float = setting(0.1, number(0.0, 1.0))
    weight_decay: float = setting(0.01, number(0.0, 1.0))
    grad_clip: float = setting(1.0, number(0.0, 1e6))
    eval_batch_size: int = setting(128, integer(1))
    threads: int | None = setting(None, optional(integer(1)))


@dataclass(frozen=True)
class LoraSection:
    probe_r: int = setting(64, integer(1))
    alpha: float | None = setting(None, optional(number(0.0, 1e6, open_lo=True)))  # default 2·probe_r
    dropout: float = setting(0.05, number(0.0, 0.9))
    target_modules: tuple[str, ...] = setting(("query", "key", "value"), _STRINGS)
    rslora: bool = setting(False, boolean)
    # how a variant at rank k sets lora_alpha: keep_scale (alpha/r, or alpha/√r with rsLoRA, equal
    # to the probe's in every layer) or keep_alpha (the probe's lora_alpha, so the scale grows as k
    # shrinks)
    variant_alpha: str = setting("keep_scale", string("keep_scale", "keep_alpha"))


@dataclass(frozen=True)
class CompressionSection:
    variants: tuple[str, ...] = setting(VARIANTS, _variants)
    allowed_ranks: tuple[int, ...] | None = setting(None, optional(_RANKS))  # planned ranks snap up
    rounding: str = setting("multiple:4", _rounding)
    energy: float = setting(0.9, number(0.0, 1.0, open_lo=True))  # the audit's τ and the energy variant's
    budget_ratio: float = setting(0.5, number(0.0, 1.0, open_lo=True))
    control_plan: str = setting("uniform_median", string(*RETRAINED))  # ranks the truncate controls use
    tune_steps: int | None = setting(None, optional(integer(1)))  # truncate_tune steps; default steps // 5
    # at most N distinct retrained rank plans per seed, in variant order (0 would retrain nothing:
    # list fewer variants instead)
    max_candidates: int | None = setting(None, optional(integer(1)))


@dataclass(frozen=True)
class PolicySection:
    pass_rate_min: float = setting(0.67, number(0.0, 1.0))
    worst_delta_min: float = setting(-0.025, number(-1.0, 1.0))
    tolerance: float = setting(-0.025, number(-1.0, 1.0))  # a seed PASSes iff Δ ≥ tolerance
    probe_min_accuracy: float = setting(0.70, number(0.0, 1.0))  # below it the seed is UNDERTRAINED


@dataclass(frozen=True)
class _File:
    """What a config file may hold (the keys `build` accepts)."""

    model: ModelSection = section(ModelSection)
    task: TaskSection = section(TaskSection)
    train: TrainSection = section(TrainSection)
    lora: LoraSection = section(LoraSection)
    compression: CompressionSection = section(CompressionSection)
    policy: PolicySection = section(PolicySection)
    seeds: tuple[int, ...] = setting((42, 123, 456), _SEEDS)


SECTIONS = tuple(f.name for f in fields(_File))


@dataclass(frozen=True)
class BenchConfig(_File):
    """The resolved config; `source` is the file it was read from or "preset:NAME"."""

    source: str = "?"

    def to_dict(self) -> dict[str, Any]:
        """Every section and `seeds` as plain JSON data (what bench_config.json records)."""
        return {name: to_dict(getattr(self, name)) for name in SECTIONS}


def config_hash(cfg: BenchConfig) -> str:
    """Over everything but `seeds`: seeds are independent runs of one protocol, so a bench can be
    resumed with more (or fewer) seeds and keeps the seeds it finished."""
    body = {k: v for k, v in cfg.to_dict().items() if k != "seeds"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_config(doc: Any, source: str) -> BenchConfig:
    """A config mapping (a file's content or a preset) → the checked config; errors name `source`
    and the dotted key."""
    sections = build(_File, doc, path=source)
    cfg = BenchConfig(**{name: getattr(sections, name) for name in SECTIONS}, source=source)
    _cross_checks(cfg)
    lora, comp = cfg.lora, cfg.compression
    if lora.alpha is None:
        lora = replace(lora, alpha=float(2 * lora.probe_r))
    if comp.allowed_ranks is not None:
        comp = replace(comp, allowed_ranks=tuple(sorted(set(comp.allowed_ranks))))
    return replace(cfg, lora=lora, compression=comp)


def _cross_checks(cfg: BenchConfig) -> None:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(problem, path=cfg.source, key=key)

    model, task = cfg.model, cfg.task
    if sum(x is not None for x in (model.path, model.name)) != 1 and model.random_init is None:
        raise fail("model", "give exactly one of model.path (a local folder) or model.name")
    if task.source == "file" and task.path is None:
        raise fail("task.path", "source 'file' needs a CSV, JSONL or Parquet path")
    if task.source == "datasets" and task.dataset is None:
        raise fail("task.dataset", "source 'datasets' needs a dataset name or local folder")
    if task.kind == "generation" and model.random_init is not None:
        raise fail("model.random_init", "random models are BERT classifiers; generation needs a model")
    if task.kind == "generation" and task.source == "rotten_tomatoes":
        raise fail("task.source", "rotten_tomatoes is a classification task")
    if "{text}" not in task.prompt_template:
        raise fail("task.prompt_template", "must contain {text}")


def _absolute(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()  # "~/data.csv" is the user's home, not a folder named "~"
    return str(path if path.is_absolute() else (base / path).resolve())


def resolve_paths(cfg: BenchConfig, base: Path) -> BenchConfig:
    """Relative data/model paths in a config file are relative to the file's folder."""
    model = replace(cfg.model, path=_absolute(cfg.model.path, base))
    task = replace(
        cfg.task, path=_absolute(cfg.task.path, base), test_path=_absolute(cfg.task.test_path, base)
    )
    return replace(cfg, model=model, task=task)


def load_config(path: str | Path | None, *, preset: str | None = None) -> BenchConfig:
    if path is None and preset is not None:
        from .presets import PRESETS

        if preset not in PRESETS:
            raise InvalidArgumentError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return parse_config(PRESETS[preset], f"preset:{preset}")
    if path is None or preset is not None:
        raise InvalidArgumentError("give a CONFIG file or --preset NAME (one of them)")
    try:
        doc = read_mapping(path, "bench config")
    except InputNotFoundError as e:  # say what to give instead (not the adapter hint)
        raise InputNotFoundError(e.message, path=e.path, hint=CONFIG_HINT) from None
    return resolve_paths(parse_config(doc, str(path)), Path(path).resolve().parent)


def _smoke(cfg: BenchConfig) -> BenchConfig:
    """A tiny random BERT (the config's tokenizer), 24 steps, r=8, at most 512 training and 256
    held-out examples, two seeds: a quick end-to-end check of the pipeline, not a measurement."""
    if cfg.task.kind != "classification":
        raise InvalidArgumentError("--smoke runs classification configs only (a random BERT)")
    r = min(cfg.lora.probe_r, 8)
    return replace(
        cfg,
        model=replace(cfg.model, random_init=cfg.model.random_init or dict(SMOKE_MODEL)),
        train=replace(cfg.train, steps=min(cfg.train.steps, 24), eval_interval=0, max_length=32),
        lora=replace(cfg.lora, probe_r=r, alpha=float(2 * r)),
        task=replace(
            cfg.task,
            max_train=min(cfg.task.max_train or 512, 512),
            max_eval=min(cfg.task.max_eval or 256, 256),
        ),
        compression=replace(cfg.compression, tune_steps=4),
        # a random BERT in 24 steps: check the pipeline, not quality
        policy=replace(cfg.policy, probe_min_accuracy=0.0),
        seeds=cfg.seeds[:2],
    )


def with_overrides(
    cfg: BenchConfig,
    *,
    seeds: list[int] | None = None,
    smoke: bool = False,
    max_candidates: int | None = None,
) -> BenchConfig:
    """Command-line overrides (--smoke, --seeds, --max-candidates), applied in that order."""
    if smoke:
        cfg = _smoke(cfg)
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise InvalidArgumentError(f"--seeds must be distinct integers ≥ 0, got {seeds}")
        cfg = replace(cfg, seeds=tuple(seeds))
    if max_candidates is not None:
        if max_candidates < 1:
            raise InvalidArgumentError(
                f"--max-candidates must be ≥ 1, got {max_candidates} "
                "(0 would retrain nothing; list fewer compression.variants instead)"
            )
        cfg = replace(cfg, compression=replace(cfg.compression, max_candidates=max_candidates))
    return cfg
