"""Entry point: build the parser from an explicit list of subcommand modules, run one, map errors."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import audit, check, compress, convert, merge, merge_audit, monitor
from ._errors import guarded

COMMANDS = (audit, compress, convert, merge_audit, merge, monitor, check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorascope", description="Is your LoRA rank doing any work? Spectral audit of adapters."
    )
    parser.add_argument("--version", action="version", version=f"lorascope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    return guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
