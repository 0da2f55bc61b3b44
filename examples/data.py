"""Datasets for the embedded example: the Rotten Tomatoes tasks, now part of `lorascope.bench.rt`.

This file re-exports them so the example scripts keep their `from data import load_task`.
`python examples/data.py` prints the size of each task's split.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install

from lorascope.bench.rt import CORPUS_NAME, TASKS, TEST_FRACTION, Split, corpus_path, load_corpus, load_task  # noqa: E402

__all__ = ["CORPUS_NAME", "TASKS", "TEST_FRACTION", "Split", "corpus_path", "load_corpus", "load_task"]

if __name__ == "__main__":
    for name in TASKS:
        s = load_task(name)
        positive = sum(s.test_labels) / len(s.test_labels)
        print(
            f"{name}: train {len(s.train_texts)}  test {len(s.test_texts)}  "
            f"test positive rate {positive:.3f}  labels {s.label_names}"
        )
