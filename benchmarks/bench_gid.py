"""GID / RaLoRA cost on MiniLM-L6: calibration step vs training steps, spectra vs pass, RaLoRA vs LoRA step.

    python benchmarks/bench_gid.py [--rounds 8] [--batch 16] [--max-len 32] [--out FILE.json]

Every round times, on the same batch and interleaved (so that a shared machine's load hits every
variant alike): one calibration step (`lorascope.gid.accumulate`, all 36 encoder linears), one
PEFT LoRA r=8 training step, one RaLoRA r=8 training step (blocks from a flat plan: 8 per layer,
the same parameters as LoRA), one full fine-tuning step (AdamW).  Reported: medians, their ratios,
the spectra time of the 36 accumulated gradients, and the accumulators' size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from evaluate import base_model_path, load_base  # noqa: E402

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def _step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from lorascope.gid import PlanLayer, accumulate, apply_plan, find_targets, layer_gid

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(base_model_path())
    texts = [f"a film that is {'good ' * (i % 7)}and {'bad ' * (i % 5)}indeed" for i in range(args.batch)]
    batch = dict(
        tok(texts, padding="max_length", max_length=args.max_len, truncation=True, return_tensors="pt")
    )
    batch["labels"] = torch.tensor([i % 2 for i in range(args.batch)])

    torch.manual_seed(0)
    _, calib = load_base()
    layers = find_targets(calib, TARGETS)
    _, lora = load_base()
    names = [n for n, _ in layers]
    lora = get_peft_model(
        lora, LoraConfig(r=8, lora_alpha=16, target_modules=names, modules_to_save=["classifier"])
    )
    _, ralora = load_base()
    plan = {n: PlanLayer(r=8, blocks=8, lora_alpha=16.0, shape=tuple(m.weight.shape)) for n, m in layers}
    apply_plan(ralora, plan, trainable=["classifier"])
    _, full = load_base()
    models = {"lora": lora, "ralora": ralora, "full": full}
    opts = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        for k, m in models.items()
    }
    for m in models.values():
        m.train()
    times: dict[str, list[float]] = {k: [] for k in ("calibration", *models)}
    grads = {}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        t0 = time.perf_counter()
        grads = accumulate(calib, [batch], lambda m, b: m(**b).loss, layers, steps=1)
        times["calibration"].append(time.perf_counter() - t0)
        for k, m in models.items():
            times[k].append(_step(m, opts[k], batch))
    t0 = time.perf_counter()
    for n, m in layers:
        layer_gid(n, m, grads[n], 8)
    spectra_s = time.perf_counter() - t0
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    result = {
        "rounds": args.rounds,
        "batch": args.batch,
        "max_len": args.max_len,
        "threads": args.threads,
        "median_s": med,
        "calibration_vs_lora_step": med["calibration"] / med["lora"],
        "calibration_vs_full_step": med["calibration"] / med["full"],
        "ralora_vs_lora_step": med["ralora"] / med["lora"],
        "spectra_s_36_layers": spectra_s,
        "accumulator_bytes": sum(g.numel() * 4 for g in grads.values()),
        "trainable": {
            k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
