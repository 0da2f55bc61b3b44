"""The optional statistics libraries (scikit-learn, scipy), imported only when a statistic needs
them: `lorascope regime features` and `classify` run on numpy alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import MissingDependencyError

PIP_LINE = "pip install 'lorascope[regime]'"


def sklearn_module(name: str) -> Any:
    """`sklearn.<name>`, or one MissingDependencyError with the pip line."""
    return _load(f"sklearn.{name}", "scikit-learn")


def scipy_stats() -> Any:
    return _load("scipy.stats", "scipy")


@contextmanager
def single_thread() -> Iterator[None]:
    """BLAS / OpenMP pools limited to one thread (threadpoolctl, a scikit-learn dependency), or
    nothing where it is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


def _load(module: str, dist: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"lorascope regime fit needs {dist}, which is not installed ({PIP_LINE})"
        ) from None
