"""Gradience's run logs (schema `gradience.vnext.telemetry/v1`) read as lorascope records.

Both schemas share the envelope (schema, ts, run_id, event, step).  `translate` turns one Gradience
record into the lorascope records (`lorascope.telemetry/v1`) that say the same thing, so the monitor
runs the same rules on both; what has no lorascope counterpart is dropped and counted as an unknown
event.  Gradience's events (its writer `gradience.vnext.telemetry.TelemetryWriter`):

  run_start       config{model_name, dataset_name, task_profile, optimizer{name, lr, weight_decay},
                  lora{r, alpha, target_modules, dropout, bias}, training{...}}, meta{}
                  -> run_start meta{model, dataset, task_profile, framework, ...} + config{lora, training}
  train_step      loss (may be absent), lr (a number, or one per param group: the first is kept),
                  grad_norm, epoch                  -> train_step
  eval            split (train | val | test | eval | other), metrics{ppl, accuracy, loss, n, ...}
                                                    -> eval, unchanged
  metrics         kind "lora_audit": metrics{n_layers, stable_rank_mean, utilization_mean, ...}
                                                    -> spectral with the means and no layers
                  other kinds (guard, ...)          -> dropped
  alert           severity info | warning | error | critical (-> error), code, message,
                  context (or metadata)             -> alert
  recommendation                                    -> dropped
  run_end         status, reason                    -> run_end

Gradience writes NaN and Infinity as bare literals (json's default); the reader accepts them.

Its nanoGPT studies' per-step logs are flat (no envelope): `translate_flat` maps one such record
(step or iter, train_loss, weight_norm, grad_norm, grad_to_weight_ratio, cos_grad_weight,
spectral_complexity, val_loss, lr) onto train_step + geometry (+ eval split "val").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import SCHEMA, fields_problem

GRADIENCE_SCHEMA = "gradience.vnext.telemetry/v1"
_SEVERITY = {"info": "info", "warning": "warning", "error": "error", "critical": "error"}


def translate(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(lorascope records, problem) for a Gradience record whose envelope is valid.  The records
    still go through `schema.validate`, which checks the payload kinds."""
    event = record["event"]
    base = {"schema": SCHEMA, "ts": record["ts"], "run_id": record["run_id"], "step": record.get("step")}
    handler = _HANDLERS.get(event)
    if handler is None:
        return [], None  # recommendation, and anything newer: nothing the monitor reads
    problem = fields_problem(record, _GRADIENCE_PAYLOAD.get(event, {}), f"{event} event")
    if problem:
        return [], problem
    return [{**base, "event": name, **payload} for name, payload in handler(record)], None


# Gradience's own required fields and kinds, checked before translating.
_GRADIENCE_PAYLOAD = {
    "run_start": {"config": "object?", "meta": "object?"},
    "eval": {"split": "string", "metrics": "object"},
    "metrics": {"kind": "string", "metrics": "object"},
    "alert": {"severity": "string", "code": "string", "message": "string"},
    "run_end": {"status": "string"},
}


def _run_start(r: Mapping[str, Any]):
    cfg = r.get("config") or {}
    meta_in = r.get("meta") or {}
    lora_in, opt, training_in = (_mapping(cfg.get(k)) for k in ("lora", "optimizer", "training"))
    meta = {
        **meta_in,
        "model": cfg.get("model_name"),
        "dataset": cfg.get("dataset_name"),
        "task_profile": cfg.get("task_profile"),
        "framework": meta_in.get("framework"),
    }
    lora = {
        "r": lora_in.get("r"),
        "lora_alpha": lora_in.get("alpha"),
        "target_modules": lora_in.get("target_modules"),
        "lora_dropout": lora_in.get("dropout"),
        "bias": lora_in.get("bias"),
    }
    training = {
        **training_in,
        "optim": opt.get("name"),
        "learning_rate": opt.get("lr"),
        "weight_decay": opt.get("weight_decay"),
    }
    return [("run_start", {"meta": meta}), ("config", {"lora": lora, "training": training})]


def _train_step(r: Mapping[str, Any]):
    lr = r.get("lr")
    if isinstance(lr, list):
        lr = lr[0] if lr else None  # one per param group: the first
    keep = {k: v for k, v in r.items() if k not in ("schema", "ts", "run_id", "event", "step")}
    return [("train_step", {**keep, "loss": r.get("loss"), "lr": lr})]


def _eval(r: Mapping[str, Any]):
    return [("eval", {"split": r["split"], "metrics": r["metrics"]})]


def _metrics(r: Mapping[str, Any]):
    if r["kind"] != "lora_audit":
        return []
    m = r["metrics"]
    summary = {
        "n_layers": m.get("n_layers"),
        "mean_stable_rank": m.get("stable_rank_mean"),
        "mean_utilisation": m.get("utilization_mean"),
    }
    return [("spectral", {"layers": [], "summary": summary})]


def _alert(r: Mapping[str, Any]):
    severity = _SEVERITY.get(r["severity"], r["severity"])  # an unknown one fails validation
    context = r.get("context") if isinstance(r.get("context"), dict) else r.get("metadata")
    payload = {"severity": severity, "code": r["code"], "message": r["message"]}
    return [("alert", {**payload, "context": context if isinstance(context, dict) else {}})]


def _run_end(r: Mapping[str, Any]):
    return [("run_end", {"status": r["status"], "reason": r.get("reason")})]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


_HANDLERS = {
    "run_start": _run_start,
    "train_step": _train_step,
    "eval": _eval,
    "metrics": _metrics,
    "alert": _alert,
    "run_end": _run_end,
}


# Gradience's per-step study logs (its nanoGPT studies' telemetry.jsonl) are flat: no envelope, one
# object per logged step with `step` (or `iter`), `train_loss`, `weight_norm`, `grad_norm`,
# `grad_to_weight_ratio`, `cos_grad_weight`, `spectral_complexity`, sometimes `val_loss`, `lr`.
FLAT_KEYS = ("train_loss", "weight_norm", "grad_norm", "cos_grad_weight", "val_loss")
_FLAT_GEOMETRY = (
    "weight_norm",
    "grad_norm",
    "cos_grad_weight",
    "grad_to_weight_ratio",
    "spectral_complexity",
)


def is_flat(record: Any) -> bool:
    """A record of Gradience's flat per-step logs: an object without `schema`, with a step or iter and
    at least one of FLAT_KEYS."""
    return (
        isinstance(record, dict)
        and "schema" not in record
        and ("step" in record or "iter" in record)
        and any(k in record for k in FLAT_KEYS)
    )


def translate_flat(record: dict[str, Any], run_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """(lorascope records, problem) for one flat record: train_step when it has train_loss, geometry
    when it has weight_norm (scope "full", n_params null: the log does not say; its grad_norm goes
    to grad_norm as logged, since the log does not say whether it was taken before or after
    clipping), eval split "val" when it has val_loss.  The run id is the caller's (the file's
    name): a flat log holds one run."""
    step = record.get("step", record.get("iter"))
    if not isinstance(step, int) or isinstance(step, bool):
        return [], "step must be an integer"
    ts = record.get("ts", record.get("time", 0.0))
    ts = ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else 0.0
    base = {"schema": SCHEMA, "ts": ts, "run_id": run_id, "step": step}
    out = []
    if "train_loss" in record:
        loss = record["train_loss"]
        out.append(
            {
                **base,
                "event": "train_step",
                "loss": loss,
                "lr": record.get("lr"),
                "grad_norm": record.get("grad_norm"),
            }
        )
    if "weight_norm" in record:
        geometry = {k: record.get(k) for k in _FLAT_GEOMETRY}
        out.append(
            {
                **base,
                "event": "geometry",
                **geometry,
                "n_params": None,
                "scope": "full",
                "loss": record.get("train_loss"),
            }
        )
    if "val_loss" in record:
        out.append({**base, "event": "eval", "split": "val", "metrics": {"loss": record["val_loss"]}})
    return out, None
