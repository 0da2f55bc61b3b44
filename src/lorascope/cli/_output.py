"""One output sink: text to stdout, or to a file written atomically and exclusively.

`-o FILE` creates FILE in an existing folder (a missing folder is refused, not created): an
existing path is refused (a regular file, so that no report silently replaces another, and so
that `-o /dev/stdout >> log` cannot truncate the log; a device, pipe or socket, which an atomic
rename would have replaced by a regular file), as is any path that would overwrite an input.
`-o -` (or no -o) writes to stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InvalidArgumentError
from ..files import check_destination, check_parent, resolved, write_text


def emit(text: str, output: str | None = None, inputs: tuple[str, ...] = ()) -> None:
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    refuse_inputs(output, inputs)
    check_parent(output)  # a typo in a folder name is an error, not a new tree
    try:
        check_destination(output)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{e.message} (or -o - for stdout)", path=output) from None
    write_text(resolved(output), text)


def refuse_inputs(output: str, inputs: tuple[str, ...]) -> None:
    """Raise if writing `output` would overwrite an input (see _is_input)."""
    dest = resolved(output)
    for src in inputs:
        if src and _is_input(resolved(src), dest):
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
