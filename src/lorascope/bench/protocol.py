"""The bench protocol: per seed probe → gate → audit → variants → evaluate → verdicts; then aggregate.

Layout of --out (every stage folder is written by `store.Store`, so it exists only when finished):

    bench_config.json            the resolved config and its hash (a resume must match it)
    seed_<S>/probe/              adapter/, run.jsonl, eval.json, stage.json
    seed_<S>/audit/              audit.json (lorascope.audit/v1), the variant plans in stage.json
    seed_<S>/<variant>/          one per distinct retrained plan: adapter/, run.jsonl, eval.json
    seed_<S>/truncate/           the probe SVD-truncated (no training): adapter/, eval.json
    seed_<S>/truncate_tune/      the truncated probe after a short tune: adapter/, run.jsonl, eval.json
    seed_<S>/bench.json, bench.md
    bench_aggregate.json, bench_aggregate.md

Nothing is written before the device, the config, the data and the model have been checked and --out
has been found usable (setup.py).  Wall time counts from process start and is split into training
(Trainer.train), evaluation and everything else (start-up, model loads, the audit, truncation,
writing); `timing.overhead_share` is the last as a share of wall time.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from ..files import write_json, write_text
from ..version import __version__
from . import render
from .aggregate import aggregate, seed_best, verdict
from .config import CONTROLS, BenchConfig
from .progress import Progress
from .results import (
    AuditRecord,
    BenchResult,
    ProbeSummary,
    SeedContext,
    SeedResult,
    Timing,
    TrainedRecord,
    VariantResult,
)
from .setup import BenchOptions, check_device, check_out, environment, prepare_out, process_start
from .store import Record, Store
from .variants import Plan, plan_summary, training_groups

__all__ = ["Bench", "BenchOptions"]
R = TypeVar("R", bound=Record)


class Bench:
    """One bench run: `run()` returns the aggregate result."""

    def __init__(self, cfg: BenchConfig, opts: BenchOptions):
        self.cfg, self.opts = cfg, opts
        self.progress = Progress(quiet=opts.quiet)
        self.train_s = self.eval_s = 0.0
        self.stages_run: list[str] = []

    def run(self) -> BenchResult:
        started = self.opts.started if self.opts.started is not None else process_start()
        check_device(self.opts.device)  # refuse an unusable device and a used --out before any work
        check_out(self.cfg, self.opts)
        from .data import load_task_data
        from .train import Runtime

        self.progress.note(f"loading task data and tokenizer ({self.cfg.source})")
        data = load_task_data(self.cfg.task)
        self.rt = Runtime(self.cfg, data, self.opts.device)
        self.rt.check_model()  # a model folder without a usable config fails now, before --out exists
        self.env = environment(self.cfg, self.opts.device)
        prepare_out(self.cfg, self.opts)
        seeds = [self.run_seed(seed) for seed in self.cfg.seeds]
        result = aggregate(seeds, self.cfg.policy, self.cfg.train.steps)
        wall = time.time() - started
        spent = self.train_s + self.eval_s
        timing = Timing(
            wall_s=round(wall, 2),
            train_s=round(self.train_s, 2),
            eval_s=round(self.eval_s, 2),
            overhead_s=round(wall - spent, 2),
            overhead_share=round((wall - spent) / wall, 4) if wall > 0 else 0.0,
            stages_run=len(self.stages_run),
        )
        result = replace(result, timing=timing, env=self.env, config=self.cfg)
        write_text(self.opts.out / "bench_aggregate.json", result.to_json(), replace=True)
        write_text(self.opts.out / "bench_aggregate.md", render.aggregate_md(result), replace=True)
        self.progress.note(f"done in {wall:.0f}s; {self.opts.out / 'bench_aggregate.md'}")
        return result

    # --- one seed -----------------------------------------------------------------------------
    def _stage(self, store: Store, name: str, fn: Callable[[Path], R], kind: type[R]) -> R:
        if store.done(name):
            self.progress.note(f"{store.root.name}/{name}: finished earlier, read back")
            return store.record(name, kind)
        self.progress.stage(f"{store.root.name}/{name}")
        rec = store.run(name, fn, kind)
        if isinstance(rec, TrainedRecord):
            self.train_s += rec.train_s
            self.eval_s += rec.eval_s
        self.stages_run.append(f"{store.root.name}/{name}")
        return rec

    def _train_eval(self, work: Path, seed: int, model, steps: int, name: str) -> TrainedRecord:
        from .train import param_counts, save_adapter

        train_s = self.rt.train(model, seed, work, steps, self.progress.step, name) if steps else 0.0
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

    def run_seed(self, seed: int) -> SeedResult:
        from .train import lora_layer_names

        store = Store(self.opts.out / f"seed_{seed}")
        store.root.mkdir(parents=True, exist_ok=True)
        store.clean_partials()
        steps = self.cfg.train.steps

        def probe_fn(work: Path) -> TrainedRecord:
            model = self.rt.peft_model(seed, {})
            rec = self._train_eval(work, seed, model, steps, f"probe seed {seed}")
            return replace(rec, layers=tuple(lora_layer_names(model)))

        probe = self._stage(store, "probe", probe_fn, TrainedRecord)
        gate = self.cfg.policy.probe_min_accuracy
        if probe.accuracy < gate:
            note = (
                f"probe accuracy {probe.accuracy:.4f} < probe_min_accuracy {gate}: "
                "no variant is trained for this seed"
            )
            return self._finish_seed(store, seed, "UNDERTRAINED", self._probe(probe), {}, (note,))
        audit = self._stage(store, "audit", lambda work: self._audit(store, work), AuditRecord)
        plans = audit.plans
        uses, skipped = training_groups(plans, self.cfg.lora.probe_r, self.cfg.compression.max_candidates)
        records: dict[str, TrainedRecord] = {"probe": probe}
        for owner in dict.fromkeys(uses.values()):  # distinct trainings, in variant order
            if owner not in records:
                fn = self._retrain(seed, plans[owner], f"{owner} seed {seed}")
                records[owner] = self._stage(store, owner, fn, TrainedRecord)
        for control in (c for c in CONTROLS if c in plans):
            fn = self._control_fn(store, seed, control, plans[control])
            records[control] = self._stage(store, control, fn, TrainedRecord)
            uses[control] = control
        done = self._compressed(plans, uses, records, audit.layer_sizes, probe)
        skip = VariantResult.skipped("--max-candidates")
        compressed = {v: done[v] if v in done else skip for v in plans if v in done or v in skipped}
        return self._finish_seed(store, seed, "ok", self._probe(probe, audit), compressed, ())

    def _retrain(self, seed: int, plan: Plan, name: str) -> Callable[[Path], TrainedRecord]:
        steps = self.cfg.train.steps
        return lambda work: self._train_eval(work, seed, self.rt.peft_model(seed, plan), steps, name)

    def _control_fn(self, store: Store, seed: int, name: str, plan: Plan) -> Callable[[Path], TrainedRecord]:
        return lambda work: self._control(store, work, seed, name, plan)

    def _audit(self, store: Store, work: Path) -> AuditRecord:
        from ..audit import audit_adapter
        from .variants import audit_options, plans_from_audit, probe_facts

        comp = self.cfg.compression
        t0 = time.perf_counter()
        report = audit_adapter(store.root / "probe" / "adapter", audit_options(comp))
        (work / "audit.json").write_text(report.to_json(), encoding="utf-8")
        plans = plans_from_audit(report, comp, self.cfg.lora.probe_r)
        sizes = {x.name: x.info.in_features + x.info.out_features for x in report.layers}
        return AuditRecord(plans, probe_facts(report, comp.energy), sizes, time.perf_counter() - t0)

    def _control(self, store: Store, work: Path, seed: int, name: str, plan: Plan) -> TrainedRecord:
        """truncate: the probe's ΔW SVD-truncated to `plan` (lorascope compress), evaluated as is;
        truncate_tune: that truncated adapter tuned for tune_steps more steps (same seed)."""
        from ..compress import compress_adapter
        from ..formats import load, save

        tune = name == "truncate_tune"
        source = store.root / "truncate" / "adapter" if tune and store.done("truncate") else None
        if source is None:
            probe = load(store.root / "probe" / "adapter")
            source = work / "truncated"
            save(compress_adapter(probe, plan), source, format="peft", source=probe)
        model = self.rt.load_adapter(seed, source, trainable=tune)
        tune_steps = self.cfg.compression.tune_steps or max(1, self.cfg.train.steps // 5)
        rec = self._train_eval(work, seed, model, tune_steps if tune else 0, f"{name} seed {seed}")
        shutil.rmtree(work / "truncated", ignore_errors=True)
        return rec

    def _probe(self, probe: TrainedRecord, audit: AuditRecord | None = None) -> ProbeSummary:
        facts = audit.probe_facts if audit is not None else None
        r = self.cfg.lora.probe_r
        return ProbeSummary(r, probe.lora_params, probe.trainable_params, probe.accuracy, probe.n, facts)

    def _compressed(self, plans, uses, records, sizes, probe: TrainedRecord) -> dict[str, VariantResult]:
        out = {}
        tol = self.cfg.policy.tolerance
        for variant, owner in uses.items():
            rec, s = records[owner], plan_summary(plans[variant], sizes)
            delta = rec.accuracy - probe.accuracy
            out[variant] = VariantResult(
                status="ok",
                accuracy=rec.accuracy,
                rank=s.rank,
                rank_min=s.rank_min,
                rank_max=s.rank_max,
                rank_mean=s.rank_mean,
                rank_pattern=s.rank_pattern,
                params=rec.lora_params,
                trainable_params=rec.trainable_params,
                delta_vs_probe=delta,
                param_reduction=1 - rec.lora_params / probe.lora_params,
                param_reduction_trainable=1 - rec.trainable_params / probe.trainable_params,
                verdict=verdict(delta, tol),
                trained_as=owner,
                retrained=variant not in CONTROLS,
            )
        return out

    def _finish_seed(self, store, seed, status, probe, compressed, notes) -> SeedResult:
        best = seed_best(compressed)
        c = self.cfg
        task = {k: getattr(c.task, k) for k in ("kind", "source", "rt_task", "path", "dataset")}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        context = SeedContext(__version__, stamp, self.env, c.model.label(), task, c.policy)
        result = SeedResult(seed, status, probe, compressed, tuple(notes), best, context)
        write_text(store.root / "bench.json", result.to_json(), replace=True)
        write_text(store.root / "bench.md", render.seed_md(result), replace=True)
        return result
