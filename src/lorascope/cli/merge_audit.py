"""`lorascope merge-audit A B`: parse flags, call lorascope.merge_audit, render (table, JSON, Markdown,
explain).  Gradience's spellings are accepted: `--adapter-a A --adapter-b B`, `--energy-threshold`,
and `--output-dir DIR`, which writes DIR/merge_audit.json and DIR/merge_audit.md as Gradience does."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import InvalidArgumentError
from ..files import check_destination
from ..formats import load
from ..merge.audit import MergeAuditOptions, merge_audit
from ..merge.fingerprint import fingerprint
from ..merge.pairwise import PairOptions
from ..merge.plan import save_plan
from ..merge.render import explain, to_markdown, to_text
from ..merge.verdict import Thresholds
from ._args import output_option, parse_weights
from ._output import emit, progress_printer, refuse_inputs

_THRESHOLD_FLAGS = (
    "overlap_low",
    "overlap_high",
    "agreement_conflict",
    "conflict_share",
    "agreement_redundant",
    "imbalance",
    "min_interference",
    "redundant_loss",
    "min_weight",
)
REPORT_FILES = ("merge_audit.json", "merge_audit.md")  # the names Gradience's --output-dir writes


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("first", nargs="?", help="first adapter (directory or file)")
    p.add_argument("second", nargs="?", help="second adapter")
    p.add_argument("--adapter-a", metavar="A", help="same as the first adapter (Gradience spelling)")
    p.add_argument("--adapter-b", metavar="B", help="same as the second adapter (Gradience spelling)")
    p.add_argument("--format", help="force the input format of both adapters")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable report (lorascope.merge_audit/v1)")
    out.add_argument("--markdown", action="store_true", help="Markdown report")
    out.add_argument(
        "--explain", metavar="LAYER", help="every metric of one layer (a unique part of its name)"
    )
    p.add_argument(
        "--vectors",
        action="store_true",
        help="principal cosines and singular values in the JSON (with --json or --output-dir)",
    )
    p.add_argument("--summary", action="store_true", help="no per-layer table (text and Markdown)")
    p.add_argument(
        "--plan", metavar="FILE", help="write the recommended merge plan (.json, .yaml) for `merge`"
    )
    p.add_argument(
        "--output-dir",
        metavar="DIR",
        help=f"also write {' and '.join(REPORT_FILES)} into DIR (created if missing)",
    )
    p.add_argument("--weights", default="1,1", help="intended merge weights, e.g. 1,0.5 (default 1,1)")
    p.add_argument(
        "--energy",
        "--energy-threshold",
        dest="energy",
        type=float,
        default=0.90,
        help="τ of the compared top-k subspaces (default 0.90)",
    )
    p.add_argument(
        "--sign-density", type=float, default=0.20, help="TIES top share for sign conflicts (0.20)"
    )
    p.add_argument(
        "--sign-sample", type=int, default=256, help="rows and columns sampled in large layers (256)"
    )
    for name in _THRESHOLD_FLAGS:
        default = getattr(Thresholds(), name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=default,
            help=f"threshold (default {default:g})",
        )
    output_option(p, "write the report to this file (atomically) instead of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _adapters(args: argparse.Namespace) -> tuple[str, str]:
    """--adapter-a / --adapter-b fill their slots; positionals fill the others, in order."""
    positional = [x for x in (args.first, args.second) if x]
    slots = [args.adapter_a, args.adapter_b]
    given = len(positional) + sum(x is not None for x in slots)
    if given != 2:
        raise InvalidArgumentError(
            f"merge-audit takes two adapters, got {given}: A B, or --adapter-a A --adapter-b B"
        )
    fill = iter(positional)
    first, second = (slot if slot is not None else next(fill) for slot in slots)
    return first, second


def _check_combinations(args: argparse.Namespace) -> None:
    """Every option acts in the combination given, or the combination is refused."""
    if args.vectors and not (args.json or args.output_dir):
        raise InvalidArgumentError("--vectors adds to the JSON report: use it with --json or --output-dir")
    if args.summary and (args.json or args.explain) and not args.output_dir:
        what = "--json" if args.json else "--explain"
        raise InvalidArgumentError(f"--summary shortens the table and Markdown reports; {what} has no table")


def run(args: argparse.Namespace) -> int:
    first, second = _adapters(args)
    _check_combinations(args)
    weights = parse_weights(args.weights, 2)
    options = MergeAuditOptions(
        pair=PairOptions(energy=args.energy, sign_density=args.sign_density, sign_sample=args.sign_sample),
        thresholds=Thresholds(**{name: getattr(args, name) for name in _THRESHOLD_FLAGS}),
        weights=(weights[0], weights[1]),
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
    )
    inputs = (first, second)
    if args.output_dir:  # refused before the work, not after it
        check_destination(args.output_dir, directory=True)
        for name in REPORT_FILES:
            refuse_inputs(str(Path(args.output_dir) / name), inputs)
    adapters = (load(first, format=args.format), load(second, format=args.format))  # read once
    report = merge_audit(*adapters, options)
    if args.plan:
        refuse_inputs(args.plan, inputs)
        prints = tuple(fingerprint(a) for a in adapters)
        save_plan(replace(report.plan(), fingerprints=prints), args.plan)
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        emit(report.to_json(vectors=args.vectors) + "\n", str(out_dir / REPORT_FILES[0]), inputs)
        emit(to_markdown(report, show_layers=not args.summary), str(out_dir / REPORT_FILES[1]), inputs)
    if args.json:
        text = report.to_json(vectors=args.vectors) + "\n"
    elif args.markdown:
        text = to_markdown(report, show_layers=not args.summary)
    elif args.explain:
        text = explain(report, args.explain)
    else:
        text = to_text(report, show_layers=not args.summary)
    emit(text, args.output, inputs=inputs)
    return 0
