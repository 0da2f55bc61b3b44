"""Keep transformers quiet while lorascope loads and trains models (bench, gid): its warnings, logs
and progress bars ("Loading weights", "newly initialized classifier", deprecation notices) would
interleave with lorascope's own progress on stderr.  Its settings are restored afterwards, so a
program that calls lorascope keeps its own verbosity.  transformers is imported on entry only."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def hf_quiet() -> Iterator[None]:
    """transformers' warnings, logs and progress bars ("Loading weights", "newly initialized
    classifier", deprecation notices) off inside the block; lorascope prints its own progress.
    The previous verbosity and progress-bar setting are restored after."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def quiet(method: Callable) -> Callable:
    """`method` runs inside `hf_quiet()`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with hf_quiet():
            return method(*args, **kwargs)

    return wrapper
