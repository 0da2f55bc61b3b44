"""`thread_scratch`: per-thread work arrays that every layer reuses.

A fresh array of a few MiB per layer costs more than its use: glibc hands the pages back to the
kernel when the arrays beside it are freed, and the next layer faults them in again, page by page
(≈ 400 minor faults and 2 ms a layer of a Mistral-sized adapter, a third of a pass, where the CLI's
malloc settings do not apply: the Python API, tests).  The read buffer of bf16 tensors
(`formats._io`) and the Gram blocks (`spectral`) keep one array each per worker thread instead.
"""

from __future__ import annotations

import threading

import numpy as np

_LOCAL = threading.local()


def thread_scratch(name: str, size: int, dtype) -> np.ndarray:
    """This thread's work array `name` (one name, one dtype), `size` elements long: grown when a
    layer needs more, never shrunk.  Its contents are whatever the last user left."""
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        setattr(_LOCAL, name, buf)
    return buf[:size]
