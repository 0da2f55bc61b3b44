"""Inputs for the report tests, built in code: a run log, a bench directory, a study directory, a
gid.json and a synthetic audit JSON of any size (no adapter needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lorascope.telemetry import RunWriter

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def run_log(path: Path, steps: int = 60) -> Path:
    """A run with train steps, evals, two spectral snapshots and a logged alert."""
    with RunWriter(path, run_id="run-1") as w:
        w.write("run_start", 0, meta={"model": "m", "dataset": "d"})
        for step in range(1, steps + 1):
            w.write(
                "train_step", step, loss=2.0 / math.sqrt(step), lr=1e-4, grad_norm=1.0 + (step == 30) * 20
            )
            if step % 20 == 0:
                w.write(
                    "eval",
                    step,
                    split="eval",
                    metrics={"loss": 1.0 / math.sqrt(step), "accuracy": 0.5 + step / 200},
                )
                layers = [
                    {
                        "name": f"l{i}",
                        "rank": 8,
                        "sigma_max": 1.0,
                        "stable_rank": 2.0,
                        "utilisation": 0.25,
                        "top1_share": 0.5 + step / 400,
                    }
                    for i in range(3)
                ]
                w.write(
                    "spectral",
                    step,
                    layers=layers,
                    summary={
                        "n_layers": 3,
                        "n_dead": 0,
                        "mean_stable_rank": 2.0,
                        "mean_utilisation": 0.25,
                        "mean_top1_share": 0.5 + step / 400,
                    },
                )
        w.write("alert", 45, severity="warning", code="USER_NOTE", message="logged <b>by</b> the run")
        w.write("run_end", steps, status="ok", reason=None)
    return path


def bench_dir(root: Path, seeds=(42, 123)) -> Path:
    root.mkdir(parents=True)
    for seed in seeds:
        d = root / f"seed_{seed}"
        d.mkdir()
        doc = {
            "schema": "lorascope.bench/v1",
            "seed": seed,
            "probe": {"rank": 64, "params": 884736, "accuracy": 0.80},
            "compressed": {
                "uniform_median": {
                    "rank": 8,
                    "params": 110592,
                    "accuracy": 0.79,
                    "delta_vs_probe": -0.01,
                    "param_reduction": 0.875,
                    "verdict": "PASS",
                },
                "energy_90": {"status": "skipped", "reason": "--max-candidates", "accuracy": None},
                "uniform_p90": {
                    "rank": 32,
                    "params": 442368,
                    "accuracy": 0.76,
                    "delta_vs_probe": -0.04,
                    "param_reduction": 0.5,
                    "verdict": "FAIL",
                },
            },
            "safety_policy": {"pass_rate_min": 0.67, "worst_delta_min": -0.025},
        }
        (d / "bench.json").write_text(json.dumps(doc))
    agg = {
        "schema": "lorascope.bench_aggregate/v1",
        "validation_classification": "screening_plus",
        "best_compression": {"variant": "uniform_median", "param_reduction": 0.875, "delta_worst": -0.01},
        "policy_compliance": {"uniform_median": {"policy_compliant": True}},
        "variant_results": {
            "uniform_median": {"mean_accuracy": 0.79, "pass_rate": 1.0, "compliant": True},
            "uniform_p90": {"mean_accuracy": 0.76, "pass_rate": 0.0, "compliant": False},
        },
    }
    (root / "bench_aggregate.json").write_text(json.dumps(agg))
    return root


def study_dir(root: Path, n: int = 24) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        r = int(2 ** rng.integers(2, 8))
        u = float(rng.uniform(0.02, 0.5))
        lines.append(
            json.dumps(
                {  # the fields `lorascope study` writes (odd lines: an older spelling, also read)
                    "source": f"adapter-{i}",
                    "format": "peft",
                    "nominal_rank": r,
                    "nominal_ranks": [r],
                    "utilisation": {"mean": u, "median": u},
                    "n_layers": 12,
                }
                if i % 2 == 0
                else {"source": f"adapter-{i}", "nominal_ranks": [r], "utilisation_mean": u}
            )
        )
    lines.append(json.dumps({"source": "no-rank", "utilisation_mean": 0.3}))
    (root / "adapters.jsonl").write_text("\n".join(lines) + "\n")
    (root / "study.json").write_text(json.dumps({"schema": "lorascope.study/v1", "counts": {"adapters": n}}))
    return root


def gid_json(path: Path, n: int = 12, r: int = 8) -> Path:
    layers = [
        {"name": f"model.layers.{i}.self_attn.q_proj", "gid": float(4 + 3 * i), "stable_rank": 2.0}
        for i in range(n)
    ]
    layers[0]["starved"] = True  # the file's own flag wins over the GID ≥ 4·r rule
    path.write_text(json.dumps({"schema": "lorascope.gid/v1", "rank": r, "layers": layers}))
    return path


def llm_names(n_blocks: int) -> list[tuple[str, str, str]]:
    """(name, block, module type) of a Mistral-shaped adapter: n_blocks × 7 modules."""
    out = []
    for b in range(n_blocks):
        for m in MODULES:
            kind = "mlp" if m in MODULES[4:] else "attention"
            out.append(
                (f"model.layers.{b}.{'mlp' if kind == 'mlp' else 'self_attn'}.{m}", f"model.layers.{b}", kind)
            )
    return out


UNET_LEAVES = (
    *(
        f"transformer_blocks.0.{a}.{m}"
        for a in ("attn1", "attn2")
        for m in ("to_q", "to_k", "to_v", "to_out.0")
    ),
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.ff.net.2",
    "proj_in",
    "proj_out",
)


def unet_names() -> list[tuple[str, str, str]]:
    """(name, block, module type) of a Stable Diffusion 1.5 UNet LoRA (diffusers names, every
    attention module): 16 attention stacks of 12 layers, 192 layers; the blocks `audit` assigns
    (the path through the first number after a named part: `unet.down_blocks.1`,
    `unet.mid_block.attentions.0`), in the file's own order (up blocks before the mid block)."""
    stacks = [(f"unet.down_blocks.{b}", a) for b in range(3) for a in range(2)]
    stacks += [(f"unet.up_blocks.{b}", a) for b in range(1, 4) for a in range(3)]
    out = [
        (f"{block}.attentions.{a}.{leaf}", block, "mlp" if ".ff." in leaf else "attention")
        for block, a in stacks
        for leaf in UNET_LEAVES
    ]
    mid = "unet.mid_block.attentions.0"
    out += [(f"{mid}.{leaf}", mid, "mlp" if ".ff." in leaf else "attention") for leaf in UNET_LEAVES]
    return out


def audit_doc(n_blocks: int = 32, r: int = 64, seed: int = 0, names=None) -> dict:
    """A lorascope.audit/v1 document shaped like a Mistral-7B adapter's (n_blocks × 7 modules), or
    with the given (name, block, module type) layers."""
    rng = np.random.default_rng(seed)
    layers = []
    for name, block, kind in names if names is not None else llm_names(n_blocks):
        t = rng.uniform(4, 24)
        sv = np.exp(-np.arange(r) / t) * rng.uniform(0.5, 2)
        e = np.cumsum(sv**2) / np.sum(sv**2)
        k = int(np.searchsorted(e, 0.9) + 1)
        stable = float(np.sum(sv**2) / sv[0] ** 2)
        layers.append(
            {
                "name": name,
                "kind": "linear",
                "rank": r,
                "shape": [4096, 4096],
                "scale": 2.0,
                "dtype": "bf16",
                "dora": False,
                "dead": False,
                "params": r * 8192,
                "suggested_rank": min(r, -(-k // 4) * 4),
                "module_type": kind,
                "block": block,
                "sigma_max": float(sv[0]),
                "frobenius": float(np.sqrt(np.sum(sv**2))),
                "stable_rank": stable,
                "effective_rank": stable * 1.5,
                "utilisation": stable / r,
                "numerical_rank": r,
                "energy_rank@0.9": k,
                "singular_values": sv.tolist(),
            }
        )
    utils = [x["utilisation"] for x in layers]
    summary = {
        "n_layers": len(layers),
        "n_dead": 0,
        "params": sum(x["params"] for x in layers),
        "utilisation": {"mean": float(np.mean(utils)), "median": float(np.median(utils))},
        "energy_rank@0.9": {"median": float(np.median([x["energy_rank@0.9"] for x in layers]))},
    }
    return {
        "schema": "lorascope.audit/v1",
        "source": {"path": None, "format": "peft"},
        "options": {"thresholds": [0.9]},
        "summary": summary,
        "suggestions": {"p90": {"rank": 32, "params": 1, "reduction": 0.5}},
        "notes": [],
        "layers": layers,
    }
