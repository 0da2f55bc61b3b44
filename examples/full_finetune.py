"""A short full fine-tune of MiniLM-L6 on Rotten Tomatoes sentiment (CPU), for `lorascope extract`.

    nice -n 10 python examples/full_finetune.py --out /tmp/minilm-full --steps 300

The same data, batch size, sequence length, schedule and seed as examples/train_example.py (which
trained examples/minilm-rt-r64), every parameter trainable, lr 5e-5 (a full fine-tune's usual rate;
the LoRA used 5e-4).  Saves the model with safetensors (fp32) and prints the held-out accuracy;
`lorascope extract BASE OUT --energy 0.9` then says what rank each layer's update needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import load_task  # noqa: E402
from evaluate import accuracy, load_base  # noqa: E402  (sets HF offline env)
from train_example import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out accuracy")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    split = load_task("sentiment", seed=0)
    tok, model = load_base()
    run = argparse.Namespace(steps=args.steps, lr=args.lr, seed=args.seed, batch_size=16, max_len=64)
    t0 = time.time()
    loss = train(model, tok, split, run)
    model.eval()
    model.save_pretrained(str(args.out), safe_serialization=True)
    acc = None if args.no_eval else accuracy(model, tok, split.test_texts, split.test_labels)
    summary = {"steps": args.steps, "lr": args.lr, "final_train_loss": round(loss, 4),
               "heldout_accuracy": None if acc is None else round(acc, 4),
               "train_seconds": round(time.time() - t0, 1)}  # fmt: skip
    (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
