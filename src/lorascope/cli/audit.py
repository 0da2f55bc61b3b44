"""`lorascope audit`: parse flags, call lorascope.audit, render."""

from __future__ import annotations

import argparse
import sys

from ..audit.audit import AuditOptions, audit_adapter
from ..audit.policies import parse as parse_policies
from ..audit.suggest import Rounding
from ..errors import InvalidArgumentError
from ._args import output_option
from ._output import emit, progress_printer, refuse_inputs


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", help="adapter directory or file")
    p.add_argument("--peft-dir", dest="peft_dir", help="same as PATH (Gradience spelling)")
    p.add_argument("--format", help="force the input format instead of detecting it")
    p.add_argument("--adapter", help="adapter sub-folder name when a directory holds several")
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json", action="store_true", help="machine-readable output (schema lorascope.audit/v1)"
    )
    out.add_argument("--markdown", action="store_true", help="Markdown report")
    p.add_argument("--layers", action="store_true", help="show every layer")
    p.add_argument(
        "--top-wasteful", type=int, default=0, metavar="N", help="show the N least-utilised layers"
    )
    p.add_argument(
        "--suggest-per-layer", action="store_true", help="print a PEFT rank_pattern/alpha_pattern config"
    )
    p.add_argument(
        "--threshold",
        "--energy",
        dest="thresholds",
        type=float,
        action="append",
        metavar="TAU",
        help="energy threshold τ for k@τ (repeatable; the first drives suggestions; default 0.90)",
    )
    p.add_argument(
        "--rounding", default="multiple:4", help="'multiple:N' (default multiple:4), 'pow2' or 'none'"
    )
    p.add_argument("--min-rank", type=int, default=1, help="smallest rank ever suggested (default 1)")
    p.add_argument(
        "--policies",
        metavar="LIST",
        help="rank policies per layer and globally, comma-separated: energy, erank, knee, oht, or 'all' "
        "(Gradience names energy_threshold, entropy_effective, knee_elbow, optimal_hard_threshold work too)",
    )
    p.add_argument(
        "--disagree-factor",
        type=float,
        default=2.0,
        metavar="F",
        help="list layers whose largest policy k exceeds F × their smallest (default 2)",
    )
    p.add_argument(
        "--base-model",
        metavar="PATH",
        help="local model folder (*.safetensors, sharded or not) or one .safetensors file: adds the "
        "update-to-base ratios udr = ‖ΔW‖₂/‖W‖₂, udr_f = ‖ΔW‖_F/‖W‖_F and sdi = log10(udr)",
    )
    p.add_argument(
        "--top-blocks", type=int, default=5, metavar="N", help="blocks listed by energy share (default 5)"
    )
    p.add_argument(
        "--append",
        metavar="RUN.JSONL",
        help="also append the audit to this lorascope run log, as a spectral snapshot of its last run",
    )
    p.add_argument("--no-singular-values", action="store_true", help="omit singular values from --json")
    output_option(p, "write the report to this file (atomically) instead of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = args.path or args.peft_dir
    if not path:
        raise InvalidArgumentError("audit needs an adapter path (PATH or --peft-dir DIR)")
    if args.path and args.peft_dir and args.path != args.peft_dir:
        raise InvalidArgumentError("give the adapter either as PATH or as --peft-dir, not both")
    if args.top_wasteful < 0:
        raise InvalidArgumentError("--top-wasteful must be ≥ 0")
    options = AuditOptions(
        thresholds=tuple(args.thresholds or (0.90,)),
        rounding=Rounding.parse(args.rounding),
        min_rank=args.min_rank,
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
        policies=parse_policies(args.policies) if args.policies is not None else (),
        disagree_factor=args.disagree_factor,
        base_model=args.base_model,
        top_blocks=args.top_blocks,
    )
    if args.append:
        refuse_inputs(args.append, (path,))
    load_opts = {"adapter_name": args.adapter} if args.adapter else {}
    report = audit_adapter(path, options, format=args.format, **load_opts)
    if args.json:
        text = report.to_json(singular_values=not args.no_singular_values) + "\n"
    else:  # the text renderers are imported only when asked for (start-up time of --json runs)
        text = _render(report, args)
    emit(text, args.output, inputs=(path,))
    if args.append:
        from ..audit.log import append_to_run

        run_id, n = append_to_run(report, args.append)
        if not args.quiet:
            print(f"lorascope: appended {n} event(s) to run {run_id} in {args.append}", file=sys.stderr)
    return 0


def _render(report, args: argparse.Namespace) -> str:
    from ..audit.render import View, to_markdown, to_text

    if args.markdown:
        # Markdown is a document: every layer unless only the least-utilised ones are asked for
        view = View(args.layers or not args.top_wasteful, args.top_wasteful, args.suggest_per_layer)
        return to_markdown(report, view)
    return to_text(report, View(args.layers, args.top_wasteful, args.suggest_per_layer))
