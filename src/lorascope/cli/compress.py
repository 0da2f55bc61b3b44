"""`lorascope compress`: parse flags, call lorascope.compress_file, render the report."""

from __future__ import annotations

import argparse

from ..compress.compress import CompressOptions, compress_file
from ..compress.plan import RankMode
from ..compress.render import to_text
from ..errors import InvalidArgumentError
from ..rounding import Rounding
from ..types import DTYPES
from ._args import output_option
from ._output import emit

# flag dest -> (mode kind, value parser)
_MODE_FLAGS = {
    "rank": ("rank", int),
    "energy": ("energy", float),
    "from_audit": ("from_audit", str),
    "budget_params": ("budget_params", int),
    "budget_ratio": ("budget_ratio", float),
    "budget_bytes": ("budget_bytes", int),
    "sv_fro": ("sv_fro", float),
    "sv_ratio": ("sv_ratio", float),
    "sv_cumulative": ("sv_cumulative", float),
}


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="adapter directory or file")
    output_option(p, "new adapter directory (must not exist or be empty)")
    p.add_argument("--format", help="force the input format instead of detecting it")
    p.add_argument("--adapter", help="adapter sub-folder name when a directory holds several")
    modes = p.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rank", type=int, metavar="N", help="uniform rank N")
    modes.add_argument("--energy", type=float, metavar="TAU", help="per layer: smallest k keeping τ of Σσ²")
    modes.add_argument("--from-audit", choices=("median", "p90", "per-layer"), help="the audit's suggestion")
    modes.add_argument("--budget-params", type=int, metavar="N", help="at most N LoRA parameters in total")
    modes.add_argument("--budget-ratio", type=float, metavar="X", help="at most X × the current parameters")
    modes.add_argument("--budget-bytes", type=int, metavar="N", help="at most N bytes of factors")
    modes.add_argument(
        "--sv-fro", type=float, metavar="X", help="kohya resize_lora sv_fro (keeps X² energy, +1)"
    )
    modes.add_argument(
        "--sv-ratio", type=float, metavar="X", help="kohya resize_lora sv_ratio (σ > σ₁/X, +1)"
    )
    modes.add_argument("--sv-cumulative", type=float, metavar="X", help="kohya sv_cumulative (Σσ ≥ X·Σσ, +1)")
    p.add_argument("--min-rank", type=int, default=1, help="never go below this rank (default 1)")
    p.add_argument("--max-rank", type=int, help="never go above this rank")
    p.add_argument(
        "--rounding",
        metavar="RULE",
        help="round ranks up, as `audit --rounding`: multiple:N, pow2 or none "
        "(default: none; with --from-audit the audit's multiple:4)",
    )
    p.add_argument("--round", dest="rounding", help=argparse.SUPPRESS)  # the earlier spelling
    p.add_argument("--threshold", type=float, help="τ behind --from-audit (default 0.90; only with it)")
    p.add_argument("--split", choices=("up", "sqrt"), default="up", help="where S goes (default: into up/B)")
    p.add_argument("--dtype", choices=DTYPES, help="output dtype (default: the input's, bf16 stays bf16)")
    p.add_argument(
        "--to", metavar="FORMAT", help="write this format instead of the input's, as `convert` does"
    )
    p.add_argument("--component", help="with --to: as `convert --component`")
    p.add_argument(
        "--lora-only",
        action="store_true",
        help="as `convert --lora-only`: leave out the full weights beside the LoRA",
    )
    p.add_argument("--dry-run", action="store_true", help="plan and report only; write nothing")
    p.add_argument("--json", action="store_true", help="machine-readable report (lorascope.compress/v1)")
    p.add_argument("--layers", action="store_true", help="show every layer in the text report")
    p.set_defaults(run=run)


def mode_from_args(args: argparse.Namespace) -> RankMode:
    for dest, (kind, _) in _MODE_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            return RankMode(kind, value, args.min_rank, args.max_rank, _rounding(args.rounding), args.dtype)
    raise InvalidArgumentError("choose a rank mode (--rank, --energy, --from-audit, --budget-*, --sv-*)")


def run(args: argparse.Namespace) -> int:
    mode = mode_from_args(args)
    if args.threshold is not None and mode.kind != "from_audit":
        raise InvalidArgumentError("--threshold is the τ behind --from-audit; other modes do not read it")
    if args.layers and args.json:
        raise InvalidArgumentError("--layers widens the text report; --json already lists every layer")
    options = CompressOptions(
        split=args.split,
        dtype=args.dtype,
        dry_run=args.dry_run,
        audit_threshold=0.90 if args.threshold is None else args.threshold,
        to=args.to,
        component=args.component,
    )
    load_opts: dict = {"adapter_name": args.adapter} if args.adapter else {}
    if args.lora_only:
        load_opts["lora_only"] = True
    report = compress_file(args.path, args.output, mode, options, format=args.format, **load_opts)
    emit(report.to_json() + "\n" if args.json else to_text(report, args.layers))
    return 0


def _rounding(text: str | None) -> Rounding | None:
    return None if text is None else Rounding.parse(text)
