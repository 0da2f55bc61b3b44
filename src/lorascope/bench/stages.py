"""The work of one bench stage, runnable in any process that sees --out: the driver (local
executor) or a Ray worker.  `StageJob` names a stage (seed, name, the rank plan it trains);
`Stages.run(job)` runs it through the seed's `StageStore`, so a finished stage is read back, never redone,
and a stage's folder appears only when it finished, whichever process ran it.

Stage kinds: "probe" (train at probe_r), a retrained variant's name (train its plan from scratch),
"truncate" (the probe SVD-truncated to the plan, evaluated), "truncate_tune" (that truncation,
tuned for tune_steps).  Every stage depends only on the config, its seed and, for the controls, the
probe's saved adapter, so stages of one phase may run in any order or in parallel.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..files import write_json, write_text
from .config import CONTROLS, BenchConfig
from .results import AuditRecord, TrainedRecord
from .store import StageStore
from .variants import Plan

Step = Callable[[int, int], None]  # (step, max_steps)


@dataclass(frozen=True)
class StageJob:
    seed: int
    name: str  # "probe", a retrained variant, or a control
    plan: Plan | None = None  # None for the probe (every layer at probe_r)

    @property
    def label(self) -> str:
        return f"seed_{self.seed}/{self.name}"


def seed_store(out: Path, seed: int) -> StageStore:
    return StageStore(out / f"seed_{seed}")


class Stages:
    """Task data, tokenizer and model factory (one `Runtime`), and the stage functions."""

    def __init__(self, cfg: BenchConfig, out: Path, device: str, step: Step | None = None):
        from .data import load_task_data
        from .train import Runtime

        self.cfg, self.out, self.step = cfg, out, step
        self.rt = Runtime(cfg, load_task_data(cfg.task), device)

    def run(self, job: StageJob) -> TrainedRecord:
        store = seed_store(self.out, job.seed)
        return store.run(job.name, lambda work: self._work(store, work, job), TrainedRecord)

    def _work(self, store: StageStore, work: Path, job: StageJob) -> TrainedRecord:
        name = f"{job.name} seed {job.seed}"
        if job.name == "probe":
            model = self.rt.peft_model(job.seed, {})
            rec = self._train_eval(work, job.seed, model, self.cfg.train.steps, name)
            from .train import lora_layer_names

            return replace(rec, layers=tuple(lora_layer_names(model)))
        if job.name in CONTROLS:
            return self._control(store, work, job)
        model = self.rt.peft_model(job.seed, job.plan or {})
        return self._train_eval(work, job.seed, model, self.cfg.train.steps, name)

    def _train_eval(self, work: Path, seed: int, model, steps: int, name: str) -> TrainedRecord:
        from .train import param_counts, save_adapter

        train_s = self.rt.train(model, seed, work, steps, self.step, name) if steps else 0.0
        shutil.rmtree(work / "trainer", ignore_errors=True)  # the Trainer's scratch folder
        t0 = time.perf_counter()
        result = self.rt.evaluate(model)
        eval_s = time.perf_counter() - t0
        write_json(work / "eval.json", result.to_dict())
        save_adapter(model, work / "adapter")
        lora, trainable = param_counts(model)
        return TrainedRecord(
            result.accuracy, result.correct, result.n, result.metric, lora, trainable, train_s, eval_s, steps
        )

    def _control(self, store: StageStore, work: Path, job: StageJob) -> TrainedRecord:
        """truncate: the probe's ΔW SVD-truncated to the plan (lorascope compress), evaluated as is;
        truncate_tune: the same truncation tuned for tune_steps more steps (same seed).  Each
        truncates the probe itself, so neither waits for the other."""
        from ..compress import compress_adapter
        from ..formats import load, save

        probe = load(store.root / "probe" / "adapter")
        source = work / "truncated"
        save(compress_adapter(probe, job.plan or {}), source, format="peft", source=probe)
        tune = job.name == "truncate_tune"
        model = self.rt.load_adapter(job.seed, source, trainable=tune)
        steps = (self.cfg.compression.tune_steps or max(1, self.cfg.train.steps // 5)) if tune else 0
        rec = self._train_eval(work, job.seed, model, steps, f"{job.name} seed {job.seed}")
        shutil.rmtree(source, ignore_errors=True)
        return rec


def audit_stage(cfg: BenchConfig, store: StageStore) -> AuditRecord:
    """The probe's audit and the variants' rank plans (numpy only; the driver runs it)."""
    from ..audit import audit_adapter
    from .variants import audit_options, plans_from_audit, probe_facts

    def work(folder: Path) -> AuditRecord:
        comp = cfg.compression
        t0 = time.perf_counter()
        report = audit_adapter(store.root / "probe" / "adapter", audit_options(comp))
        write_text(folder / "audit.json", report.to_json())
        plans = plans_from_audit(report, comp, cfg.lora.probe_r)
        sizes = {x.name: x.info.in_features + x.info.out_features for x in report.layers}
        return AuditRecord(plans, probe_facts(report, comp.energy), sizes, time.perf_counter() - t0)

    return store.run("audit", work, AuditRecord)
