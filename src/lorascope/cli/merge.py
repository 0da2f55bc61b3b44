"""`lorascope merge`: parse flags (or a plan file), call lorascope.merge_files, render the report."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from ..errors import InvalidArgumentError
from ..formats import load
from ..merge.checks import MAX_ERROR
from ..merge.execute import MergeOptions, merge_files
from ..merge.fingerprint import check_plan_inputs
from ..merge.methods import METHODS
from ..merge.plan import LayerPlan, MergePlan, load_plan, method_keys, uses_seed
from ..merge.render import merged_text
from ..types import DTYPES
from ._args import output_option, parse_weights
from ._output import emit, progress_printer


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "adapters", nargs="+", metavar="ADAPTER", help="two or more adapters (directories or files)"
    )
    output_option(p, "new adapter directory (must not exist or be empty)", required=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--plan", metavar="FILE", help="a merge plan (.json/.yaml), e.g. from `merge-audit --plan`"
    )
    how.add_argument("--method", choices=tuple(METHODS), help="one method for every layer (default linear)")
    p.add_argument("--weights", help="one weight per adapter, e.g. 1,0.5 (default 1 each; not with --plan)")
    p.add_argument(
        "--density", type=float, help="kept share for ties / dare_* / magnitude_prune (default 0.8)"
    )
    p.add_argument(
        "--rank",
        type=int,
        help="target rank of svd and the dense methods' re-factorisation (default: Σ ranks; svd: max)",
    )
    p.add_argument("--energy", type=float, help="instead of --rank: keep this share of Σσ² per layer")
    p.add_argument(
        "--majority", choices=("total", "frequency"), help="ties / dare_ties sign election (default total)"
    )
    p.add_argument(
        "--seed", type=int, help="seed of DARE's drops and the dense methods' randomized SVD (default 0)"
    )
    p.add_argument("--dtype", choices=DTYPES, help="output dtype (default: the widest input dtype)")
    p.add_argument(
        "--max-error",
        type=float,
        help="exit 1 (the adapter is still written) when any layer's post-merge error "
        "‖intended − written‖_F/‖intended‖_F exceeds this.  Default: "
        f"{MAX_ERROR:g} for linear and svd layers; ties, dare_ties, dare_linear and magnitude_prune "
        "sparsify ΔW, which no LoRA rank holds exactly, so their loss is reported (a line and "
        "summary.lossy_by_method) and checked only when this option is given",
    )
    p.add_argument(
        "--ignore-fingerprints",
        action="store_true",
        help="merge with --plan even when the plan was written for other adapters or another order",
    )
    p.add_argument("--format", help="force the input format of every adapter")
    p.add_argument("--json", action="store_true", help="machine-readable report (lorascope.merge/v1)")
    p.add_argument("--layers", action="store_true", help="show every layer in the text report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


_PLAN_FLAGS = ("weights", "density", "rank", "energy", "majority", "seed")


def plan_from_args(args: argparse.Namespace) -> MergePlan:
    """The plan from --plan, or from the flags; a flag the chosen method would not read is refused."""
    n = len(args.adapters)
    given = [f for f in _PLAN_FLAGS if getattr(args, f) is not None]
    if args.plan:
        if given:
            raise InvalidArgumentError(f"--{given[0]} cannot be combined with --plan; edit the plan instead")
        plan = load_plan(args.plan)
        if len(plan.weights) != n:
            raise InvalidArgumentError(
                f"the plan has {len(plan.weights)} weights for {n} adapters", path=args.plan
            )
        return plan
    method = args.method or "linear"
    unused = [f for f in given if f != "weights" and method not in _readers(f)]
    if unused:
        readers = ", ".join(_readers(unused[0]))
        raise InvalidArgumentError(
            f"--{unused[0]} does not apply to --method {method} (it does to {readers})"
        )
    if args.rank is not None and args.energy is not None:
        raise InvalidArgumentError("give --rank or --energy, not both")
    if args.density is not None and not 0 < args.density <= 1:
        raise InvalidArgumentError("--density must be in (0, 1]")
    if args.rank is not None and args.rank < 1 or args.energy is not None and not 0 < args.energy <= 1:
        raise InvalidArgumentError("--rank must be ≥ 1 and --energy in (0, 1]")
    if args.seed is not None and args.seed < 0:
        raise InvalidArgumentError("--seed must be ≥ 0")
    weights = parse_weights(args.weights, n) if args.weights else (1.0,) * n
    majority = args.majority or "total"
    default = LayerPlan(method, None, args.density, args.rank, args.energy, majority)
    return MergePlan(weights, default, seed=args.seed or 0)


def _readers(flag: str) -> list[str]:
    """The methods that read a plan flag."""
    if flag == "seed":
        return [m for m in METHODS if uses_seed(m)]
    return [m for m in METHODS if flag in method_keys(m)]


def run(args: argparse.Namespace) -> int:
    if len(args.adapters) < 2:
        raise InvalidArgumentError("merge needs at least two adapters")
    if args.layers and args.json:
        raise InvalidArgumentError("--layers widens the text report; --json already lists every layer")
    if args.ignore_fingerprints and not args.plan:
        raise InvalidArgumentError("--ignore-fingerprints applies to --plan")
    if args.max_error is not None and not 0 <= args.max_error < float("inf"):
        raise InvalidArgumentError(f"--max-error must be a number ≥ 0, got {args.max_error}")
    plan = plan_from_args(args)
    options = MergeOptions(
        dtype=args.dtype,
        max_error=args.max_error,
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
    )
    adapters = [load(p, format=args.format) for p in args.adapters]
    note = None
    if args.plan and not args.ignore_fingerprints:
        note = check_plan_inputs(plan.fingerprints, adapters, args.plan)
    report = merge_files(adapters, args.output, plan, options)
    if note:
        report = replace(report, notes=(*report.notes, note))
    emit(report.to_json() + "\n" if args.json else merged_text(report, args.layers))
    return 1 if report.over_max_error else 0
