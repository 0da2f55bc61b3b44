"""`lorascope extract`: parse flags, call lorascope.extract.extract_checkpoint, render the report."""

from __future__ import annotations

import argparse
import sys

from ..compress.plan import RankMode
from ..errors import InvalidArgumentError
from ..extract.extract import DEFAULT_MIN_CHANGE, ExtractOptions, extract_checkpoint
from ..extract.render import extract_text
from ..rounding import Rounding
from ..types import DTYPES
from ._args import output_option
from ._output import emit, progress_printer

_MODES = {"rank": int, "energy": float, "sv_fro": float, "sv_ratio": float, "sv_cumulative": float}


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="base checkpoint: .safetensors file, folder, or shard index")
    p.add_argument("tuned", metavar="TUNED", help="fine-tuned or merged checkpoint of the same model")
    output_option(p, "adapter to write (must not exist)", required=True, metavar="DST")
    modes = p.add_mutually_exclusive_group(required=True)
    modes.add_argument("--rank", type=int, metavar="N", help="rank N for every layer")
    modes.add_argument("--energy", type=float, metavar="TAU", help="per layer: smallest k keeping τ of Σσ²")
    modes.add_argument("--sv-fro", type=float, metavar="X", help="kohya sv_fro (keeps X² energy, +1)")
    modes.add_argument("--sv-ratio", type=float, metavar="X", help="kohya sv_ratio (σ > σ₁/X, +1)")
    modes.add_argument("--sv-cumulative", type=float, metavar="X", help="kohya sv_cumulative (Σσ ≥ X·Σσ, +1)")
    p.add_argument("--min-rank", type=int, default=1, help="never go below this rank (default 1)")
    p.add_argument("--max-rank", type=int, help="never go above this rank")
    p.add_argument(
        "--rounding", metavar="RULE", help="round ranks up: multiple:N, pow2 or none (default none)"
    )
    p.add_argument(
        "--to", default="peft", metavar="FORMAT", help="peft (default), kohya, diffusers or lycoris"
    )
    p.add_argument(
        "--min-change",
        type=float,
        default=DEFAULT_MIN_CHANGE,
        metavar="EPS",
        help=f"skip tensors whose ‖ΔW‖/‖W_base‖ is below EPS (default {DEFAULT_MIN_CHANGE:g})",
    )
    p.add_argument(
        "--modules", metavar="REGEX", help="extract LoRA layers only for module paths matching REGEX"
    )
    p.add_argument("--dtype", choices=DTYPES, help="factors' dtype (default: each tuned tensor's own)")
    p.add_argument("--layers", action="store_true", help="show every layer in the text report")
    p.add_argument("--json", action="store_true", help="machine-readable report (lorascope.extract/v1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    mode = None
    for kind, _ in _MODES.items():
        value = getattr(args, kind)
        if value is not None:
            rounding = None if args.rounding is None else Rounding.parse(args.rounding)
            mode = RankMode(kind, value, args.min_rank, args.max_rank, rounding)
    if mode is None:
        raise InvalidArgumentError("choose a rank mode (--rank, --energy, --sv-*)")
    options = ExtractOptions(
        mode=mode,
        to=args.to,
        min_change=args.min_change,
        modules=args.modules,
        dtype=args.dtype,
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
    )
    report = extract_checkpoint(args.base, args.tuned, args.output, options)
    emit(report.to_json() + "\n" if args.json else extract_text(report, args.layers))
    return 0
