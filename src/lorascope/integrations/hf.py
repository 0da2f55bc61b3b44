"""`LorascopeCallback`: a transformers TrainerCallback that writes the run log while training.

The only module of lorascope.telemetry that imports torch/transformers (on import of this module;
`lorascope.telemetry.LorascopeCallback` resolves it lazily).  Events: run_start and config at train
begin, train_step per `on_log` that carries a loss (no epoch-only duplicates), eval
per evaluation (split "eval", `eval_` prefix stripped, ppl added from the loss), a spectral snapshot
every `snapshot_every` steps read straight from the PEFT LoRA modules (no disk round trip), a
geometry event every `geometry_every` optimizer steps (`probe.GeometryProbe`), alerts
from the live monitor, run_end.  Only the world-process-zero writes.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from ..metrics import Spectrum, energy_key, energy_rank, stable_rank, utilisation
from ..monitor import LiveMonitor, Thresholds
from ..spectral import lora_singular_values
from ..telemetry.schema import from_record
from ..telemetry.writer import RunWriter
from ..version import __version__
from .lora import RALORA, lora_factors, lora_modules
from .probe import Geometry, GeometryProbe

__all__ = ["RALORA", "CallbackConfig", "LorascopeCallback", "layer_stats", "lora_modules"]


@dataclass(frozen=True)
class CallbackConfig:
    path: str | None = None  # default: <args.output_dir>/run.jsonl
    snapshot_every: int = 50  # optimizer steps between spectral snapshots (0 = only at the end)
    live_monitor: bool = True
    stop_on: str | None = None  # "warning" | "error": stop training on such a live alert
    model_name: str | None = None
    dataset_name: str | None = None
    task_profile: str = "unknown"
    allow_text: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    geometry_every: int = 10  # optimizer steps between geometry events (0 = none)
    geometry_scope: str = "auto"  # "lora" (the LoRA factors) | "full" | "auto": lora when present


def layer_stats(name: str, mod: Any, adapter: str) -> dict[str, Any]:
    down, up, scale = lora_factors(mod, adapter)
    sigma = lora_singular_values(down, up, scale)  # (r,)
    spec = Spectrum(sigma, int(down.shape[0]))
    energy = spec.energy
    return {
        "name": name,
        "rank": spec.rank,
        "sigma_max": float(sigma[0]) if sigma.size else 0.0,
        "stable_rank": stable_rank(spec),
        energy_key(0.9): energy_rank(spec, 0.9),
        "utilisation": utilisation(spec),
        "top1_share": float(sigma[0] ** 2 / energy) if energy > 0 else 0.0,
    }


def _summary(layers: list[dict[str, Any]]) -> dict[str, Any]:
    live = [x for x in layers if x["stable_rank"] > 0]

    def mean(k: str) -> float | None:
        return float(np.mean([x[k] for x in live])) if live else None

    return {
        "n_layers": len(layers),
        "n_dead": len(layers) - len(live),
        "mean_stable_rank": mean("stable_rank"),
        "mean_utilisation": mean("utilisation"),
        "mean_top1_share": mean("top1_share"),
    }


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


class LorascopeCallback(TrainerCallback):
    def __init__(self, config: CallbackConfig | None = None, **kwargs: Any):
        self.config = config or CallbackConfig(**kwargs)
        self.writer: RunWriter | None = None
        self.live = LiveMonitor(self.config.thresholds) if self.config.live_monitor else None
        self._layers: list[tuple[str, Any, str]] = []
        self._last_snapshot: int | None = None
        self._probe: GeometryProbe | None = None
        self._pending: tuple[int, Geometry] | None = None  # measured, waiting for its on_log
        self._clips = True

    def _write(self, event: str, step: int | None, control=None, **payload: Any) -> None:
        writer, live = self.writer, self.live
        if writer is None:
            return
        rec = writer.write(event, step, **payload)
        if rec is None or live is None or event == "alert":
            return
        live.add(from_record(rec))
        if event in ("eval", "spectral") or (
            event == "train_step" and not math.isfinite(_num(payload["loss"]) or 0)
        ):
            self._run_live(live, writer, step, control)

    def _run_live(self, live: LiveMonitor, writer: RunWriter, step: int | None, control) -> None:
        order = {"info": 0, "warning": 1, "error": 2}
        for alert in live.check():
            writer.alert(alert.severity, alert.code, alert.message, step, **dict(alert.context))
            stop = self.config.stop_on
            if control is not None and stop and order[alert.severity] >= order[stop]:
                control.should_training_stop = True

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        path = self.config.path or f"{args.output_dir}/run.jsonl"
        self.writer = RunWriter(path, allow_text=self.config.allow_text, process_index=0)
        self._layers = lora_modules(model) if model is not None else []
        versions = {"lorascope": __version__, "torch": torch.__version__, "python": platform.python_version()}
        try:
            import transformers

            versions["transformers"] = transformers.__version__
            import peft

            versions["peft"] = peft.__version__
        except ImportError:
            pass
        meta = {
            "model": self.config.model_name,
            "dataset": self.config.dataset_name,
            "seed": args.seed,
            "task_profile": self.config.task_profile,
            "framework": "huggingface",
            "versions": versions,
        }
        self._write("run_start", 0, meta=meta)
        self._write("config", 0, lora=self._lora_config(model), training=self._training(args))
        self._snapshot(0, control)
        self._start_geometry(args, model)

    def _start_geometry(self, args, model) -> None:
        every, writer = self.config.geometry_every, self.writer
        if not every or model is None or writer is None:
            return
        if not any(p.requires_grad for p in model.parameters()):
            return
        self._probe = GeometryProbe(model, writer, every=every, scope=self.config.geometry_scope)
        self._clips = bool(args.max_grad_norm and args.max_grad_norm > 0)

    # Geometry: measured in on_pre_optimizer_step (after the Trainer clipped, before the step: the
    # gradient the optimizer receives), written at the on_log of the same step, which carries the
    # Trainer's pre-clip grad_norm and its loss (the mean since the previous log); a step without a
    # log is written at the next hook, with the pre-clip norm only where the Trainer does not clip.
    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._flush_geometry()
        step = state.global_step + 1  # the step this update completes, as on_step_end / on_log see it
        if self._probe is not None and self._probe.due(step):
            self._pending = (step, self._probe.measure())

    def _flush_geometry(self, loss: float | None = None, preclip: float | None = None) -> None:
        if self._pending is None:
            return
        step, g = self._pending
        self._pending = None
        if preclip is None and not self._clips:
            preclip = g.grad_norm
        self._write("geometry", step, **g.payload(loss, preclip))

    def _lora_config(self, model) -> dict[str, Any]:
        cfgs = getattr(model, "peft_config", None) or {}
        out: dict[str, Any] = {"n_lora_layers": len(self._layers)}
        for name, cfg in cfgs.items():
            d = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
            keep = ("r", "lora_alpha", "use_rslora", "target_modules", "lora_dropout", "bias", "peft_type")
            out[name] = {k: d.get(k) for k in keep}
        return out

    @staticmethod
    def _training(args) -> dict[str, Any]:
        keys = (
            "learning_rate",
            "weight_decay",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "num_train_epochs",
            "optim",
            "lr_scheduler_type",
            "warmup_steps",
            "seed",
            "logging_steps",
            "eval_strategy",
            "bf16",
            "fp16",
        )
        return {k: getattr(args, k, None) for k in keys}

    def _snapshot(self, step: int, control) -> None:
        if not self._layers or self._last_snapshot == step:
            return
        self._last_snapshot = step
        layers = [layer_stats(n, m, a) for n, m, a in self._layers]
        self._write("spectral", step, control, layers=layers, summary=_summary(layers))

    def on_step_end(self, args, state, control, **kwargs):
        every = self.config.snapshot_every
        if self.writer is not None and every and state.global_step % every == 0:
            self._snapshot(state.global_step, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:  # eval logs come through on_evaluate; epoch-only logs are dropped
            return
        self._write(
            "train_step",
            state.global_step,
            control,
            loss=_num(logs["loss"]),
            lr=_num(logs.get("learning_rate")),
            grad_norm=_num(logs.get("grad_norm")),
            epoch=_num(logs.get("epoch")),
        )
        if self._pending is not None and self._pending[0] == state.global_step:
            self._flush_geometry(_num(logs["loss"]), _num(logs.get("grad_norm")))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._flush_geometry()
        m = {k.removeprefix("eval_"): _num(v) for k, v in (metrics or {}).items()}
        loss = m.get("loss")
        if loss is not None and "ppl" not in m:
            m["ppl"] = math.exp(min(loss, 50.0))
        self._write("eval", state.global_step, control, split="eval", metrics=m)

    def on_train_end(self, args, state, control, **kwargs):
        if self.writer is None:
            return
        self._flush_geometry()
        self._snapshot(state.global_step, None)
        status = "aborted" if control.should_training_stop and state.global_step < state.max_steps else "ok"
        self._write("run_end", state.global_step, None, status=status, reason=None)
        self.writer.close()
        self.writer = None
        self._probe = None
