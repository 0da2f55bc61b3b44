"""`lorascope merge-audit`: parse flags, call lorascope.merge_audit, render (table, JSON, explain)."""

from __future__ import annotations

import argparse
import sys

from ..merge.audit import MergeAuditOptions, merge_audit
from ..merge.pairwise import PairOptions
from ..merge.plan import save_plan
from ..merge.render import explain, to_text
from ..merge.verdict import Thresholds
from ._args import parse_weights
from ._output import emit, progress_printer, refuse_inputs

_THRESHOLD_FLAGS = (
    "overlap_low",
    "overlap_high",
    "agreement_conflict",
    "conflict_share",
    "agreement_redundant",
    "imbalance",
    "min_interference",
    "over_provisioned",
    "min_weight",
)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("first", help="first adapter (directory or file)")
    p.add_argument("second", help="second adapter")
    p.add_argument("--format", help="force the input format of both adapters")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable report (lorascope.merge_audit/v1)")
    out.add_argument(
        "--explain", metavar="LAYER", help="every metric of one layer (a unique part of its name)"
    )
    p.add_argument(
        "--vectors", action="store_true", help="with --json: principal cosines and singular values"
    )
    p.add_argument("--summary", action="store_true", help="no per-layer table")
    p.add_argument(
        "--plan", metavar="FILE", help="write the recommended merge plan (.json, .yaml) for `merge`"
    )
    p.add_argument("--weights", default="1,1", help="intended merge weights, e.g. 1,0.5 (default 1,1)")
    p.add_argument(
        "--energy", type=float, default=0.90, help="τ of the compared top-k subspaces (default 0.90)"
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
    p.add_argument("-o", "--output", help="write the report to this file (atomically) instead of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    weights = parse_weights(args.weights, 2)
    options = MergeAuditOptions(
        pair=PairOptions(energy=args.energy, sign_density=args.sign_density, sign_sample=args.sign_sample),
        thresholds=Thresholds(**{name: getattr(args, name) for name in _THRESHOLD_FLAGS}),
        weights=(weights[0], weights[1]),
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
    )
    report = merge_audit(args.first, args.second, options, format=args.format)
    if args.plan:
        refuse_inputs(args.plan, (args.first, args.second))
        save_plan(report.plan(), args.plan)
    if args.json:
        text = report.to_json(vectors=args.vectors) + "\n"
    elif args.explain:
        text = explain(report, args.explain)
    else:
        text = to_text(report, show_layers=not args.summary)
    emit(text, args.output, inputs=(args.first, args.second))
    return 0
