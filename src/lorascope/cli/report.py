"""`lorascope report INPUT... -o report.html`: one self-contained HTML page for any mix of
adapters, audit and merge-audit JSON, run logs, bench and study directories and gid.json."""

from __future__ import annotations

import argparse

from ..report import build_report
from ._output import emit, refuse_inputs


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="adapter, audit JSON, merge-audit JSON, run.jsonl, bench directory, study directory or gid.json",
    )
    p.add_argument(
        "-o", "--output", required=True, help="the HTML file to write (atomically; never replaced)"
    )
    p.add_argument("--title", default="lorascope report", help="page title (default: 'lorascope report')")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs = tuple(args.inputs)
    if args.output != "-":
        refuse_inputs(args.output, inputs)  # before any work: nothing is read only to be refused
    page = build_report(inputs, title=args.title)
    emit(page.html, args.output, inputs=inputs)
    return 0
