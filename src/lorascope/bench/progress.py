"""Progress on stderr: the stage, the training step and the stage's ETA; silent when quiet.

Lines, not a redrawn bar: they stay readable in logs and CI.  A step line is printed at most every
`every_s` seconds (and at the last step), so progress costs nothing measurable.
"""

from __future__ import annotations

import sys
import time

from ..textsafe import clean


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(self, quiet: bool = False, every_s: float = 10.0, stream=None, started: float | None = None):
        """`started`: epoch seconds the printed clock counts from (default: now)."""
        self.quiet, self.every_s = quiet, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.bench_start = time.perf_counter() - (0.0 if started is None else max(0.0, time.time() - started))
        self.name = ""
        self.stage_start = self.last = self.bench_start

    def _print(self, text: str) -> None:
        if not self.quiet:
            elapsed = _clock(time.perf_counter() - self.bench_start)
            print(clean(f"[bench {elapsed}] {text}"), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._print(text)

    def stage(self, name: str) -> None:
        self.name = name
        self.stage_start = self.last = time.perf_counter()
        self._print(f"{name}: started")

    def step(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if self.quiet or (now - self.last < self.every_s and step < total) or step <= 0:
            return
        self.last = now
        eta = (now - self.stage_start) / step * (total - step)
        self._print(f"{self.name}: step {step}/{total}  ETA {_clock(eta)}")
