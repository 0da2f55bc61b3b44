"""Entry point: the parser from an explicit table of subcommands; run one; map errors to one line.

Only the invoked command's module is imported (start-up time counts in every command's wall
time): `lorascope --version` and `lorascope --help` import no command module and no numpy.

`tune_malloc` calls glibc's mallopt through ctypes (no library offers it): measured ≈10 % of
`audit` / `merge-audit` wall time on a 7B-shaped adapter (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from ..version import __version__
from ._errors import guarded

# subcommand -> (module under lorascope.cli, one-line help), in help order
COMMANDS = {
    "audit": ("audit", "per-layer spectra and rank suggestions for an adapter"),
    "compress": ("compress", "write a smaller adapter: per-layer truncated SVD of ΔW"),
    "convert": ("convert", "rewrite a LoRA adapter in another format (ΔW preserved exactly)"),
    "merge-audit": ("merge_audit", "predict how two adapters interact when merged; write a merge plan"),
    "merge": ("merge", "merge N LoRA adapters (any ranks) into one, checked against the exact ΔW"),
    "monitor": ("monitor", "summarise a training run log and raise alerts"),
    "check": ("check", "validate a LoRA config and training args before training"),
    "study": ("study", "audit many adapters (folders, lists, Hub repos) into one dataset and tables"),
    "bench": ("bench", "retrain at the audited ranks over seeds; verdicts under a safety policy"),
    "gid": ("gid", "gradient intrinsic dimensionality per layer (rank starvation); RaLoRA plans"),
    "regime": ("regime", "which hyperparameter regime a run is in, from its early training geometry"),
    "report": ("report", "one self-contained HTML page with plots of any lorascope inputs and results"),
    "extract": ("extract", "a LoRA adapter from a full fine-tune or merged checkpoint and its base"),
    "verify-merge": ("verify_merge", "check that a merged checkpoint equals BASE + s·B·A, layer by layer"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand is listed; only `only` (the invoked one) gets its module and arguments."""
    parser = argparse.ArgumentParser(
        prog="lorascope", description="Is your LoRA rank doing any work? Spectral audit of adapters."
    )
    parser.add_argument("--version", action="version", version=f"lorascope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            import_module(f".{module}", __package__).register(p)
    return parser


def tune_malloc() -> None:
    """glibc: serve allocations below 64 MiB from the heap and trim it only above 256 MiB.

    Each layer's factors are a few MiB; by default glibc mmaps and unmaps every such array, so
    every layer pays fresh page faults (≈10 % of `merge-audit` / `audit` wall time on a 7B-shaped
    adapter, benchmarks/README.md).  Same effect as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_;
    a no-op where mallopt does not exist.  Called by the CLI only, never on import."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: glibc's, where it is glibc
    except (OSError, AttributeError):
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real process: before a command module loads numpy (OpenBLAS) or torch
        from ..parallel import idle_threads_sleep

        idle_threads_sleep()
    args_in = sys.argv[1:] if argv is None else argv
    first = args_in[0] if args_in else None
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(args_in)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    if argv is None:  # a real process (console script / python -m), not a test calling main()
        tune_malloc()
    return guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
