"""Map exceptions to one line on stderr and an exit code.  LORASCOPE_DEBUG=1 shows tracebacks."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from ..errors import LorascopeError
from ..textsafe import clean

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def debug_enabled() -> bool:
    return os.environ.get("LORASCOPE_DEBUG", "").lower() not in ("", "0", "false", "no")


def guarded(fn: Callable[[], int]) -> int:
    """Run fn; turn any error into one stderr line and a non-zero code."""
    try:
        return fn()
    except LorascopeError as e:
        if debug_enabled():
            traceback.print_exc()
        line = f"lorascope: error: {e}"
        if e.hint:
            line += f" (hint: {e.hint})"
        print(clean(line), file=sys.stderr)  # one line whatever the file names hold
        return e.exit_code
    except KeyboardInterrupt:
        print("lorascope: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except MemoryError:
        print("lorascope: error: out of memory", file=sys.stderr)
        return EXIT_INTERNAL
    except OSError as e:
        if debug_enabled():
            traceback.print_exc()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(clean(f"lorascope: error: {where}{e.strerror or e}"), file=sys.stderr)
        return 2
    except Exception as e:  # a bug in lorascope: still one line unless debugging
        if debug_enabled():
            traceback.print_exc()
        else:
            print(
                clean(
                    f"lorascope: internal error: {type(e).__name__}: {e} "
                    "(set LORASCOPE_DEBUG=1 for a traceback and please report it)"
                ),
                file=sys.stderr,
            )
        return EXIT_INTERNAL
