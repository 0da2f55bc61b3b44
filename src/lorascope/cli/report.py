"""`lorascope report INPUT... -o report.html`: one self-contained HTML page for any mix of
adapters, audit and merge-audit JSON, run logs, bench and study directories, gid.json, regime.json
and the fair test's summary.json (schema lorascope.gid-trial/v1)."""

from __future__ import annotations

import argparse
import sys

from ..files import check_parent
from ..report import build_report
from ._args import output_option
from ._output import emit, refuse_inputs


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="adapter, audit JSON, merge-audit JSON, run.jsonl, bench directory, study directory, "
        "gid.json, regime.json or the fair test's summary.json",
    )
    output_option(
        p,
        "the HTML file to write (atomically; never replaced; its folder must exist; - for stdout)",
        required=True,
    )
    p.add_argument("--title", default="lorascope report", help="page title (default: 'lorascope report')")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run)


def size_text(n: int) -> str:
    """A file size as people read it: 980 B, 287.6 kB, 1.1 MB (powers of 1000)."""
    for limit, unit in ((1e6, "MB"), (1e3, "kB")):
        if n >= limit:
            return f"{n / limit:.1f} {unit}"
    return f"{n} B"


def run(args: argparse.Namespace) -> int:
    inputs = tuple(args.inputs)
    if args.output != "-":
        refuse_inputs(args.output, inputs)  # before any work: nothing is read only to be refused
        check_parent(args.output)  # no folder is created for the page
    page = build_report(inputs, title=args.title)
    emit(page.html, args.output, inputs=inputs)
    if args.output != "-" and not args.quiet:
        print(f"wrote {args.output} ({size_text(len(page.html.encode()))})", file=sys.stderr)
    return 0
