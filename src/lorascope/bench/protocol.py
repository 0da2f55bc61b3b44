"""The bench protocol: per seed probe → gate → audit → variants → evaluate → verdicts; then aggregate.

Layout of --out (every stage folder is written by `store.StageStore`, so it exists only when finished):

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

import time
from dataclasses import replace

from ..files import write_text
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
from .setup import (
    BenchOptions,
    check_device,
    check_executor,
    check_out,
    check_stack,
    environment,
    prepare_out,
    process_start,
)
from .stages import StageJob, Stages, audit_stage, seed_store
from .variants import plan_summary, training_groups

__all__ = ["Bench", "BenchOptions"]


class Bench:
    """One bench run: `run()` returns the aggregate result."""

    def __init__(self, cfg: BenchConfig, opts: BenchOptions):
        self.cfg, self.opts = cfg, opts
        self.progress = Progress(quiet=opts.quiet)
        self.train_s = self.eval_s = 0.0
        self.stages_run: list[str] = []

    def run(self) -> BenchResult:
        started = self.opts.started if self.opts.started is not None else process_start()
        self.progress = Progress(quiet=self.opts.quiet, started=started)  # its clock: from process start
        check_stack()
        check_device(self.opts.device)  # refuse an unusable device and a used --out before any work
        check_executor(self.opts.executor)
        check_out(self.cfg, self.opts)
        self.progress.note(f"loading task data and tokenizer ({self.cfg.source})")
        self.stages = Stages(self.cfg, self.opts.out, self.opts.device, self.progress.step)
        self.stages.rt.check_model()  # a model folder without a usable config fails before --out exists
        self.env = environment(self.cfg, self.opts.device)
        prepare_out(self.cfg, self.opts)
        seeds = self.cfg.seeds
        # local: one seed after another (each seed's bench.json as soon as it is done); ray: every
        # seed's probes at once, then every (seed, variant) training at once
        groups = [[s] for s in seeds] if self.opts.executor == "local" else [list(seeds)]
        done: dict[int, SeedResult] = {}
        for group in groups:
            done |= self._run_seeds(group)
        result = aggregate([done[s] for s in seeds], self.cfg.policy, self.cfg.train.steps)
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

    # --- stages -------------------------------------------------------------------------------
    def _run_jobs(self, jobs: list[StageJob]) -> dict[tuple[int, str], TrainedRecord]:
        """Every job's record: finished ones read back, the rest run by the executor."""
        out: dict[tuple[int, str], TrainedRecord] = {}
        todo = []
        for job in jobs:
            store = seed_store(self.opts.out, job.seed)
            store.root.mkdir(parents=True, exist_ok=True)
            if store.done(job.name):
                self.progress.note(f"{job.label}: finished earlier, read back")
                out[(job.seed, job.name)] = store.record(job.name, TrainedRecord)
            else:
                todo.append(job)
        if self.opts.executor == "ray" and todo:
            from .executor import run_on_ray

            self.progress.note(f"{len(todo)} stages as Ray tasks")
            records = run_on_ray(self.cfg, self.opts, todo, self.progress.note)
        else:
            records = [self._local(job) for job in todo]
        for job, rec in zip(todo, records, strict=True):
            self.train_s += rec.train_s
            self.eval_s += rec.eval_s
            self.stages_run.append(job.label)
            out[(job.seed, job.name)] = rec
        return out

    def _local(self, job: StageJob) -> TrainedRecord:
        self.progress.stage(job.label)
        return self.stages.run(job)

    def _audit(self, seed: int) -> AuditRecord:
        store = seed_store(self.opts.out, seed)
        if store.done("audit"):
            self.progress.note(f"seed_{seed}/audit: finished earlier, read back")
        else:
            self.progress.stage(f"seed_{seed}/audit")
            self.stages_run.append(f"seed_{seed}/audit")
        return audit_stage(self.cfg, store)

    # --- seeds --------------------------------------------------------------------------------
    def _run_seeds(self, seeds: list[int]) -> dict[int, SeedResult]:
        for seed in seeds:
            store = seed_store(self.opts.out, seed)
            store.root.mkdir(parents=True, exist_ok=True)
            store.clean_partials()
        probes = self._run_jobs([StageJob(seed, "probe") for seed in seeds])
        results: dict[int, SeedResult] = {}
        planned = {}
        jobs: list[StageJob] = []
        gate = self.cfg.policy.probe_min_accuracy
        for seed in seeds:
            probe = probes[(seed, "probe")]
            if probe.accuracy < gate:
                note = (
                    f"probe accuracy {probe.accuracy:.4f} < probe_min_accuracy {gate}: "
                    "no variant is trained for this seed"
                )
                results[seed] = self._finish_seed(seed, "UNDERTRAINED", self._probe(probe), {}, (note,))
                continue
            audit = self._audit(seed)
            plans = audit.plans
            uses, skipped = training_groups(plans, self.cfg.lora.probe_r, self.cfg.compression.max_candidates)
            owners = [o for o in dict.fromkeys(uses.values()) if o != "probe"]  # distinct, variant order
            controls = [c for c in CONTROLS if c in plans]
            jobs += [StageJob(seed, name, plans[name]) for name in owners + controls]
            uses |= {c: c for c in controls}
            planned[seed] = (audit, uses, skipped)
        records = self._run_jobs(jobs)
        for seed, (audit, uses, skipped) in planned.items():
            probe = probes[(seed, "probe")]
            mine = {"probe": probe} | {name: rec for (s, name), rec in records.items() if s == seed}
            done = self._compressed(audit.plans, uses, mine, audit.layer_sizes, probe)
            skip = VariantResult.skipped("--max-candidates")
            compressed = {v: done.get(v, skip) for v in audit.plans if v in done or v in skipped}
            results[seed] = self._finish_seed(seed, "ok", self._probe(probe, audit), compressed, ())
        return results

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

    def _finish_seed(self, seed, status, probe, compressed, notes) -> SeedResult:
        best = seed_best(compressed)
        c = self.cfg
        task = {k: getattr(c.task, k) for k in ("kind", "source", "rt_task", "path", "dataset")}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        context = SeedContext(__version__, stamp, self.env, c.model.label(), task, c.policy)
        result = SeedResult(seed, status, probe, compressed, tuple(notes), best, context)
        root = seed_store(self.opts.out, seed).root
        write_text(root / "bench.json", result.to_json(), replace=True)
        write_text(root / "bench.md", render.seed_md(result), replace=True)
        return result
