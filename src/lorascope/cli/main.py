"""Entry point: build the parser from an explicit table of subcommand modules, run one, map errors.

Only the invoked command's module is imported (start-up time counts in every command's wall time);
`lorascope --help` and unknown commands import them all to list them.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from .. import __version__
from ._errors import guarded

# subcommand -> module under lorascope.cli, in help order
COMMANDS = {
    "audit": "audit",
    "compress": "compress",
    "convert": "convert",
    "merge-audit": "merge_audit",
    "merge": "merge",
    "monitor": "monitor",
    "check": "check",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorascope", description="Is your LoRA rank doing any work? Spectral audit of adapters."
    )
    parser.add_argument("--version", action="version", version=f"lorascope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            import_module(f".{module}", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    first = args_in[0] if args_in else None
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(args_in)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    return guarded(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
