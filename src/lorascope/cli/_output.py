"""One output sink: text to stdout, or to a file written atomically (never over an input)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InvalidArgumentError
from ..formats._io import write_text_atomic


def emit(text: str, output: str | None = None, inputs: tuple[str, ...] = ()) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    refuse_inputs(output, inputs)
    write_text_atomic(Path(output).resolve(), text)


def refuse_inputs(output: str, inputs: tuple[str, ...]) -> None:
    """Raise if writing `output` would overwrite an input (see _is_input)."""
    dest = Path(output).resolve()
    for src in inputs:
        if src and _is_input(Path(src).resolve(), dest):
            raise InvalidArgumentError(f"refusing to overwrite the input {src}", path=output)


def _is_input(src: Path, dest: Path) -> bool:
    """dest is the input itself, or an existing file inside an input directory (its weights, config,
    a sub-folder adapter); a new file beside them (adapter/audit.json) is fine."""
    if dest == src:
        return True
    return src.is_dir() and dest.exists() and src in dest.parents


def progress_printer(enabled: bool):
    """A (done, total, name) callback drawing one updating stderr line, or None."""
    if not enabled:
        return None

    def show(done: int, total: int, name: str) -> None:
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r  {done}/{total} {name[:60]:<60}{end}")
        sys.stderr.flush()

    return show
