"""`lorascope verify-merge`: parse flags, call lorascope.extract.verify_merge, render; exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import InvalidArgumentError
from ..extract.render import verify_text
from ..extract.verify import VerifyOptions, verify_merge
from ._output import emit, progress_printer


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="base checkpoint: .safetensors file, folder, or shard index")
    p.add_argument(
        "adapter", metavar="ADAPTER", help="the adapter that was merged (any format lorascope reads)"
    )
    p.add_argument("merged", metavar="MERGED", help="the merged checkpoint")
    p.add_argument(
        "--tol",
        type=float,
        metavar="REL",
        help="relative Frobenius tolerance of targeted layers (default: derived from the stored dtypes)",
    )
    p.add_argument("--all", action="store_true", help="list every targeted layer, not only the defects")
    p.add_argument("--json", action="store_true", help="machine-readable report (lorascope.verify-merge/v1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.tol is not None and not (math.isfinite(args.tol) and args.tol > 0):
        raise InvalidArgumentError(f"--tol must be a number > 0, got {args.tol}")
    options = VerifyOptions(tol=args.tol, progress=progress_printer(not args.quiet and sys.stderr.isatty()))
    report = verify_merge(args.base, args.adapter, args.merged, options)
    emit(report.to_json() + "\n" if args.json else verify_text(report, args.all))
    return report.exit_code
