"""The fair test of rank placed by gradient dimensionality (RaLoRA, RaLoRA-Pro, a GID PEFT plan)
against uniform LoRA at equal trainable parameters.  The protocol and the decision rule were
written down (docs/gid.md, "A fair test") before this script's first run; this script is that
protocol, nothing chosen after seeing a test score.

    python examples/gid_fair_test.py --out examples/gid-fair            # everything, resumable
    python examples/gid_fair_test.py --out examples/gid-fair --summarise  # summary.json, results.md
    python -m lorascope report examples/gid-fair/summary.json -o fair.html

Model: MiniLM-L6 cut to its first 3 transformer blocks (18 linear layers as targets), mean-pooled
over the tokens as sentence-transformers pools it, with a fresh 2-way linear head: the whole
protocol must fit 2 CPU-hours on a 2-core machine.  Per task: one GID
calibration on training batches -> gid-TASK.json and its plans.  Phase 1 (seed 0): every method at
every learning rate of the grid; the validation accuracy after the last step picks each method's
learning rate per task.  Phase 2: seeds 1-4 at the chosen rate (seed 0's selection run is reused).
Every run trains on the same batches in the same order for its seed, is evaluated on the
validation split every `--eval-every` steps and on the test split once at the end, and is appended
to runs.jsonl as one JSON line when it finishes: a killed run is lost, the finished ones are not,
and a restart skips them.  `--jobs` worker processes (one thread each) share the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fair_tasks  # noqa: E402
from gid_experiment import TARGETS, warmup_then_decay  # noqa: E402
from gid_experiment import batches as experiment_batches  # noqa: E402

METHODS = ("lora", "ralora", "ralora-pro", "peft-gid", "peft-random", "full")
LR_GRID = (2e-4, 1e-3, 5e-3)
SEEDS = (0, 1, 2, 3, 4)
RANK = 8
BLOCKS = 3  # transformer blocks of MiniLM-L6 kept


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", default=list(fair_tasks.TASKS), choices=fair_tasks.TASKS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--val-n", type=int, default=400, help="validation examples (the split's first N)")
    ap.add_argument("--test-n", type=int, default=1000, help="test examples (the split's first N)")
    ap.add_argument("--calib-steps", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--lrs", type=float, nargs="+", default=list(LR_GRID))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--summarise", action="store_true", help="only write summary.json / results.md")
    return ap.parse_args(argv)


# --- model and data (run in the workers) -----------------------------------------------------------


def mean_pooled(encoder, n_labels: int = 2):
    """MiniLM's encoder with its sentence embedding (the mean of the token states over the mask,
    as sentence-transformers pools it) and a linear head; `model(**batch)` gives .loss and .logits."""
    from torch import nn

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = encoder
            self.classifier = nn.Linear(encoder.config.hidden_size, n_labels)

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            mask = attention_mask.unsqueeze(-1).to(h.last_hidden_state.dtype)  # (batch, tokens, 1)
            pooled = (h.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (batch, hidden)
            logits = self.classifier(pooled)
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return SimpleNamespace(loss=loss, logits=logits)

    return Model()


def base_model(seed: int):
    """(tokenizer, MiniLM-L6 cut to BLOCKS blocks, mean-pooled, with a fresh 2-way head seeded by `seed`)."""
    import torch
    from evaluate import base_model_path
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    path = base_model_path()
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
    encoder.encoder.layer = encoder.encoder.layer[:BLOCKS]
    encoder.config.num_hidden_layers = BLOCKS
    return AutoTokenizer.from_pretrained(path), mean_pooled(encoder)


def batches(tok, part, batch: int, max_len: int, seed: int, steps: int) -> list[dict]:
    """`steps` batches in the seed's order (the same for every method and learning rate)."""
    return experiment_batches(tok, part.texts, part.labels, batch, max_len, seed, steps)


def accuracy(model, tok, part, max_len: int) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(part), 64):
            enc = tok(
                list(part.texts[i : i + 64]),
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1)
            correct += int((pred == torch.tensor(part.labels[i : i + 64])).sum())
    model.train()
    return correct / len(part)


def random_placement(plan, seed: int) -> dict[str, int]:
    """The GID PEFT plan's ranks shuffled across layers of the same d_in + d_out (so the parameter
    count is exactly the plan's): the same heterogeneity, placed at random (one draw per seed)."""
    import numpy as np

    rng = np.random.default_rng(10_000 + seed)
    by_width: dict[int, list[str]] = {}
    for name, layer in plan.layers.items():
        by_width.setdefault(sum(layer.shape), []).append(name)
    ranks = {}
    for names in by_width.values():
        names = sorted(names)
        drawn = [plan.layers[n].r for n in names]
        rng.shuffle(drawn)
        ranks.update(zip(names, drawn, strict=True))
    return ranks


def build(method: str, plans: dict, seed: int):
    from peft import LoraConfig, get_peft_model

    from lorascope.gid import apply_plan

    tok, model = base_model(seed)
    if method == "full":
        return tok, model
    if method in ("ralora", "ralora-pro"):
        apply_plan(model, plans[method], trainable=["classifier"])
        return tok, model
    names = sorted(plans["peft"].layers)
    if method == "lora":
        ranks = {n: RANK for n in names}
    elif method == "peft-gid":
        ranks = {n: plans["peft"].layers[n].r for n in names}
    else:
        ranks = random_placement(plans["peft"], seed)
    cfg = LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        target_modules=names,
        rank_pattern={n: r for n, r in ranks.items() if r != RANK},
        alpha_pattern={n: 2 * r for n, r in ranks.items() if r != RANK},  # alpha / r = 2 everywhere
        modules_to_save=["classifier"],
        lora_dropout=0.0,
    )
    return tok, get_peft_model(model, cfg)


def train_one(job: dict) -> dict:
    """One run: build, train `steps` steps with validation every `eval_every`, test at the end."""
    import torch

    from lorascope.gid import read_plan

    torch.set_num_threads(1)
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    out = Path(job["out"])
    plans = {m: read_plan(out / f"plan-{job['task']}-{m}.json") for m in ("ralora", "ralora-pro", "peft")}
    data = fair_tasks.load(job["task"])
    val, test = data.val.head(job["val_n"]), data.test.head(job["test_n"])
    tok, model = build(job["method"], plans, job["seed"])
    steps = job["steps"]
    train = batches(tok, data.train, job["batch"], job["max_len"], job["seed"], steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job["lr"], weight_decay=0.0, fused=True)
    sched = warmup_then_decay(opt, steps)
    model.train()
    curve, losses, window = [], [], []
    for step, batch in enumerate(train, start=1):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if step % 25 == 0:
            losses.append([step, sum(window) / len(window)])
            window = []
        if step % job["eval_every"] == 0 or step == steps:
            curve.append([step, accuracy(model, tok, val, job["max_len"])])
    test_acc = accuracy(model, tok, test, job["max_len"])
    return {
        **{k: job[k] for k in ("task", "method", "seed", "lr", "phase", "steps", "batch", "max_len")},
        "trainable_params": sum(p.numel() for p in params),
        "val_curve": curve,
        "val_acc": curve[-1][1],
        "test_acc": test_acc,
        "n_val": len(val),
        "n_test": len(test),
        "train_loss": losses,
        "cpu_s": time.process_time() - t_cpu,
        "wall_s": time.perf_counter() - t_wall,
        "finite": all(v == v for _, v in losses),
    }


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- calibration and plans (in the driver) ---------------------------------------------------------


def calibrate_task(args, task: str) -> None:
    import torch

    from lorascope.gid import CalibrationConfig, PlanOptions, calibrate, make_plan, read_report, write_json

    gid_path = args.out / f"gid-{task}.json"
    if not gid_path.exists():
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        tok, model = base_model(0)
        data = fair_tasks.load(task)
        calib = batches(tok, data.train, 16, args.max_len, 20_000, args.calib_steps)  # its own order
        cfg = CalibrationConfig(steps=args.calib_steps, rank=RANK, model_name=f"all-MiniLM-L6-v2[:{BLOCKS}]")
        write_json(gid_path, calibrate(model, calib, lambda m, b: m(**b).loss, TARGETS, cfg))
    report = read_report(gid_path)
    opts = PlanOptions(rank=RANK, alpha=2.0 * RANK, r_min=1, r_max=64)
    for method in ("ralora", "ralora-pro", "peft"):
        path = args.out / f"plan-{task}-{method}.json"
        if not path.exists():
            write_json(path, make_plan(report, method, opts))


# --- scheduling -----------------------------------------------------------------------------------


def read_runs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill mid-write: that run is redone
                continue
    return rows


def chosen_lrs(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Per (task, method): the grid's learning rate with the highest seed-0 validation accuracy after
    the last step; ties go to the higher mean over the validation curve, then the lower rate."""
    best: dict[tuple[str, str], tuple] = {}
    for r in rows:
        if r["phase"] != "select":
            continue
        key = (r["task"], r["method"])
        score = (r["val_acc"], sum(v for _, v in r["val_curve"]) / len(r["val_curve"]), -r["lr"])
        if key not in best or score > best[key][0]:
            best[key] = (score, r["lr"])
    return {k: v[1] for k, v in best.items()}


def run_jobs(args, jobs: list[dict], runs_path: Path) -> None:
    done = {(r["task"], r["method"], r["seed"], r["lr"]) for r in read_runs(runs_path)}
    todo = [j for j in jobs if (j["task"], j["method"], j["seed"], j["lr"]) not in done]
    todo.sort(key=lambda j: j["method"] != "full")  # the longest runs first: no idle worker at the end
    print(f"{len(todo)} runs to do ({len(jobs) - len(todo)} already done)", file=sys.stderr, flush=True)
    if not todo:
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(train_one, j): j for j in todo}
        for i, fut in enumerate(as_completed(futures), start=1):
            row = fut.result()
            with runs_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            print(
                f"[{i}/{len(todo)}] {row['task']} {row['method']} seed {row['seed']} lr {row['lr']:g}: "
                f"val {row['val_acc']:.4f} test {row['test_acc']:.4f} ({row['cpu_s']:.0f} CPU-s)",
                file=sys.stderr,
                flush=True,
            )


def job(args, task: str, method: str, seed: int, lr: float, phase: str) -> dict:
    keys = ("steps", "batch", "max_len", "eval_every", "val_n", "test_n")
    return {
        "out": str(args.out), "task": task, "method": method, "seed": seed, "lr": lr, "phase": phase,
        **{k: getattr(args, k) for k in keys},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from fair_summary import summarise

    args = parse_args(argv)
    runs_path = args.out / "runs.jsonl"
    if args.summarise:
        print(summarise(args.out))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for task in args.tasks:
        calibrate_task(args, task)
    first = args.seeds[0]
    select = [
        job(args, t, m, first, lr, "select") for t in args.tasks for m in args.methods for lr in args.lrs
    ]
    run_jobs(args, select, runs_path)
    lrs = chosen_lrs(read_runs(runs_path))
    final = [
        job(args, t, m, s, lrs[(t, m)], "final")
        for s in args.seeds[1:]
        for t in args.tasks
        for m in args.methods
    ]
    run_jobs(args, final, runs_path)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"this invocation: {time.perf_counter() - t0:.0f} s wall, "
        f"driver {time.process_time() - c0:.0f} CPU-s, "
        f"workers {children.ru_utime + children.ru_stime:.0f} CPU-s",
        file=sys.stderr,
    )
    print(summarise(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
