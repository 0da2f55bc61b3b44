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

Wall time is split into training (Trainer.train), evaluation and everything else (model loads, the
audit, truncation, writing); `timing.overhead_share` is the last as a share of wall time.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import jsontext
from ..errors import InvalidArgumentError
from ..files import read_json, write_json, write_text
from ..version import __version__
from . import render
from .aggregate import aggregate, verdict
from .config import CONTROLS, BenchConfig, config_hash
from .progress import Progress
from .store import Store
from .variants import audit_options, plan_summary, plans_from_audit, training_groups

SCHEMA = "lorascope.bench/v1"


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    device: str = "cpu"
    resume: bool = False
    quiet: bool = False


def _git_commit() -> str | None:
    try:
        p = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def environment(cfg: BenchConfig, device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    return {
        "lorascope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "config_hash": config_hash(cfg.raw),
    }


def check_out(cfg: BenchConfig, opts: BenchOptions) -> bool:
    """A new bench needs an empty (or new) --out; --resume needs the same config as the one it
    resumes.  Returns whether --out already holds this bench."""
    marker = opts.out / "bench_config.json"
    if marker.is_file():
        if not opts.resume:
            raise InvalidArgumentError(
                "already holds a bench; pass --resume to continue it or choose another --out", path=opts.out
            )
        stored = read_json(marker)
        if stored.get("config_hash") != config_hash(cfg.raw):
            raise InvalidArgumentError(
                "holds a bench run with another config (or other --seeds/--smoke); "
                "resume with the same arguments or choose another --out",
                path=opts.out,
            )
        return True
    if opts.out.exists() and (not opts.out.is_dir() or any(opts.out.iterdir())):
        raise InvalidArgumentError("exists and is not an empty folder; choose another --out", path=opts.out)
    return False


def prepare_out(cfg: BenchConfig, opts: BenchOptions) -> None:
    if check_out(cfg, opts):
        return
    marker = opts.out / "bench_config.json"
    opts.out.mkdir(parents=True, exist_ok=True)
    write_json(
        marker,
        {
            "schema": "lorascope.bench_config/v1",
            "config_hash": config_hash(cfg.raw),
            "source": cfg.source,
            "config": cfg.raw,
        },
    )


class Bench:
    """One bench run: `run()` returns the aggregate document."""

    def __init__(self, cfg: BenchConfig, opts: BenchOptions):
        self.cfg, self.opts = cfg, opts
        self.progress = Progress(quiet=opts.quiet)
        self.timing = {"train_s": 0.0, "eval_s": 0.0}
        self.stages_run: list[str] = []

    def run(self) -> dict[str, Any]:
        from .data import load_task_data
        from .train import Runtime

        start = time.perf_counter()
        check_out(self.cfg, self.opts)  # refuse a used --out before any work
        self.progress.note(f"loading task data and tokenizer ({self.cfg.source})")
        data = load_task_data(self.cfg["task"])
        self.rt = Runtime(self.cfg.raw, data, self.opts.device)
        self.rt.check_model()  # a model folder without a usable config fails now, before --out exists
        self.env = environment(self.cfg, self.opts.device)
        prepare_out(self.cfg, self.opts)
        docs = [self.run_seed(seed) for seed in self.cfg.seeds]
        steps = self.cfg["train"]["steps"]
        agg = aggregate(docs, self.cfg["policy"], steps)
        wall = time.perf_counter() - start
        spent = self.timing["train_s"] + self.timing["eval_s"]
        agg["timing"] = {
            "wall_s": round(wall, 2),
            **{k: round(v, 2) for k, v in self.timing.items()},
            "overhead_s": round(wall - spent, 2),
            "overhead_share": round((wall - spent) / wall, 4) if wall > 0 else 0.0,
            "stages_run": len(self.stages_run),
            "note": "this invocation only; stages finished by an earlier run are read back, not timed",
        }
        agg["env"] = self.env
        agg["config"] = self.cfg.raw
        write_text(self.opts.out / "bench_aggregate.json", jsontext.dumps(agg), replace=True)
        write_text(self.opts.out / "bench_aggregate.md", render.aggregate_md(agg), replace=True)
        self.progress.note(f"done in {wall:.0f}s; {self.opts.out / 'bench_aggregate.md'}")
        return agg

    # --- one seed -----------------------------------------------------------------------------
    def _stage(self, store: Store, name: str, fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        if store.done(name):
            self.progress.note(f"{store.root.name}/{name}: finished earlier, read back")
            return store.record(name)
        self.progress.stage(f"{store.root.name}/{name}")
        rec = store.run(name, fn)
        self.timing["train_s"] += rec.get("train_s", 0.0)
        self.timing["eval_s"] += rec.get("eval_s", 0.0)
        self.stages_run.append(f"{store.root.name}/{name}")
        return rec

    def _train_eval(self, work: Path, seed: int, model, steps: int, name: str) -> dict[str, Any]:
        from .train import param_counts, save_adapter

        train_s = self.rt.train(model, seed, work, steps, self.progress.step, name) if steps else 0.0
        shutil.rmtree(work / "trainer", ignore_errors=True)  # the Trainer's scratch folder
        t0 = time.perf_counter()
        result = self.rt.evaluate(model)
        eval_s = time.perf_counter() - t0
        write_json(work / "eval.json", result)
        save_adapter(model, work / "adapter")
        return {**result, **param_counts(model), "train_s": train_s, "eval_s": eval_s, "steps": steps}

    def run_seed(self, seed: int) -> dict[str, Any]:
        from .train import lora_layer_names

        store = Store(self.opts.out / f"seed_{seed}")
        store.root.mkdir(parents=True, exist_ok=True)
        store.clean_partials()
        steps = self.cfg["train"]["steps"]

        def probe(work: Path) -> dict[str, Any]:
            model = self.rt.peft_model(seed, {})
            rec = self._train_eval(work, seed, model, steps, f"probe seed {seed}")
            return {**rec, "layers": lora_layer_names(model)}

        probe_rec = self._stage(store, "probe", probe)
        doc: dict[str, Any] = self._seed_head(seed, probe_rec)
        if probe_rec["accuracy"] < self.cfg["policy"]["probe_min_accuracy"]:
            doc["status"] = "UNDERTRAINED"
            doc["summary"]["notes"].append(
                f"probe accuracy {probe_rec['accuracy']:.4f} < probe_min_accuracy "
                f"{self.cfg['policy']['probe_min_accuracy']}: no variant is trained for this seed"
            )
            return self._finish_seed(store, doc)
        audit_rec = self._stage(store, "audit", lambda work: self._audit(store, work))
        doc["probe"].update(audit_rec["probe_facts"])
        plans = audit_rec["plans"]
        uses, skipped = training_groups(
            plans, self.cfg["lora"]["probe_r"], self.cfg["compression"]["max_candidates"]
        )
        records: dict[str, dict[str, Any]] = {"probe": probe_rec}
        for owner in dict.fromkeys(uses.values()):  # distinct trainings, in variant order
            if owner not in records:
                records[owner] = self._stage(
                    store, owner, self._retrain(seed, plans[owner], f"{owner} seed {seed}")
                )
        for control in (c for c in CONTROLS if c in plans):
            records[control] = self._stage(
                store, control, self._control_fn(store, seed, control, plans[control])
            )
            uses[control] = control
        doc["compressed"] = self._compressed(plans, uses, records, audit_rec["layer_sizes"], probe_rec)
        for v in skipped:
            doc["compressed"][v] = {"status": "skipped", "reason": "--max-candidates", "accuracy": None}
        return self._finish_seed(store, doc)

    def _retrain(self, seed: int, plan: dict[str, int], name: str) -> Callable[[Path], dict[str, Any]]:
        steps = self.cfg["train"]["steps"]
        return lambda work: self._train_eval(work, seed, self.rt.peft_model(seed, plan), steps, name)

    def _control_fn(
        self, store: Store, seed: int, name: str, plan: dict[str, int]
    ) -> Callable[[Path], dict[str, Any]]:
        return lambda work: self._control(store, work, seed, name, plan)

    def _audit(self, store: Store, work: Path) -> dict[str, Any]:
        from ..audit import audit_adapter
        from ..metrics import energy_key

        comp = self.cfg["compression"]
        t0 = time.perf_counter()
        report = audit_adapter(store.root / "probe" / "adapter", audit_options(comp))
        (work / "audit.json").write_text(report.to_json(), encoding="utf-8")
        plans = plans_from_audit(report, comp, self.cfg["lora"]["probe_r"])
        key = energy_key(float(comp["energy"]))
        s = report.summary
        facts = {
            "utilization_mean": s["utilisation"]["mean"] if s["utilisation"] else None,
            "energy_rank_90_p50": s[key]["median"] if s[key] else None,
            "energy_rank_90_p90": s[key]["p90"] if s[key] else None,
            "suggested_r_global_median": report.suggestions["median"]["rank"],
            "suggested_r_global_90": report.suggestions["p90"]["rank"],
            "energy_threshold": float(comp["energy"]),
        }
        sizes = {x.name: x.info.in_features + x.info.out_features for x in report.layers}
        return {
            "plans": plans,
            "probe_facts": facts,
            "layer_sizes": sizes,
            "audit_s": time.perf_counter() - t0,
        }

    def _control(
        self, store: Store, work: Path, seed: int, name: str, plan: dict[str, int]
    ) -> dict[str, Any]:
        """truncate: the probe's ΔW SVD-truncated to `plan` (lorascope compress), evaluated as is;
        truncate_tune: that truncated adapter tuned for tune_steps more steps (same seed)."""
        from ..compress import compress_adapter
        from ..formats import load, save

        source = (
            store.root / "truncate" / "adapter"
            if name == "truncate_tune" and store.done("truncate")
            else None
        )
        if source is None:
            probe = load(store.root / "probe" / "adapter")
            source = work / "truncated"
            save(compress_adapter(probe, plan), source, format="peft", source=probe)
        tune = name == "truncate_tune"
        model = self.rt.load_adapter(seed, source, trainable=tune)
        steps = (
            (self.cfg["compression"]["tune_steps"] or max(1, self.cfg["train"]["steps"] // 5)) if tune else 0
        )
        rec = self._train_eval(work, seed, model, steps, f"{name} seed {seed}")
        shutil.rmtree(work / "truncated", ignore_errors=True)
        return rec

    def _seed_head(self, seed: int, probe_rec: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        return {
            "schema": SCHEMA,
            "bench_version": __version__,
            "seed": seed,
            "status": "ok",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "git_commit": self.env["git_commit"],
            "env": self.env,
            "model": c["model"]["path"] or c["model"]["name"] or "random-bert",
            "task": {k: c["task"][k] for k in ("kind", "source", "rt_task", "path", "dataset")},
            "probe": {
                "rank": c["lora"]["probe_r"],
                "params": probe_rec["lora_params"],
                "trainable_params": probe_rec["trainable_params"],
                "accuracy": probe_rec["accuracy"],
                "n_eval": probe_rec["n"],
            },
            "compressed": {},
            "summary": {"notes": []},
            "param_counting": {
                "params": "LoRA factor parameters r·(in+out), summed over LoRA layers (the headline)",
                "trainable_params": "LoRA factors plus saved heads (modules_to_save): all trainable",
            },
            "safety_policy": dict(c["policy"]),
        }

    def _compressed(self, plans, uses, records, sizes, probe_rec) -> dict[str, Any]:
        out = {}
        tol = self.cfg["policy"]["tolerance"]
        for variant, owner in uses.items():
            rec, summary = records[owner], plan_summary(plans[variant], sizes)
            delta = rec["accuracy"] - probe_rec["accuracy"]
            out[variant] = {
                "rank": summary["rank"],
                "rank_min": summary["rank_min"],
                "rank_max": summary["rank_max"],
                "rank_mean": summary["rank_mean"],
                "rank_pattern": summary["rank_pattern"],
                "params": rec["lora_params"],
                "trainable_params": rec["trainable_params"],
                "accuracy": rec["accuracy"],
                "delta_vs_probe": delta,
                "param_reduction": 1 - rec["lora_params"] / probe_rec["lora_params"],
                "param_reduction_trainable": 1 - rec["trainable_params"] / probe_rec["trainable_params"],
                "verdict": verdict(delta, tol),
                "trained_as": owner,
                "retrained": variant not in CONTROLS,
                "status": "ok",
            }
        return out

    def _finish_seed(self, store: Store, doc: dict[str, Any]) -> dict[str, Any]:
        ok = [
            v for v, r in doc["compressed"].items() if r.get("verdict") == "PASS" and r["param_reduction"] > 0
        ]
        best = max(ok, key=lambda v: doc["compressed"][v]["param_reduction"], default=None)
        doc["summary"].update({"recommendations_validated": bool(ok), "best_compression": best})
        write_text(store.root / "bench.json", jsontext.dumps(doc), replace=True)
        write_text(store.root / "bench.md", render.seed_md(doc), replace=True)
        return doc
