"""`lorascope gid`: measure each layer's gradient intrinsic dimensionality (GID) and plan RaLoRA.

    lorascope gid MODEL_DIR --data FILE [--task cls|clm] [--target q,v] [--steps 64] [--batch 8]
                  [--max-len 128] [--layers-per-pass N] [-o gid.json] [-q]   calibration pass (torch)
    lorascope gid --report gid.json --plan ralora|ralora-pro|peft [--rank 8] [--plan-out plan.json]

With MODEL_DIR and --plan, the plan is made from the fresh report.  Outputs are checked before any
work and written only after everything succeeded (atomically); an existing output is refused.
`--plan peft` prints a ready-to-paste `LoraConfig(...)`.  Progress of the calibration pass goes to
stderr when stderr is a terminal (not in pipes, not with -q).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from ..errors import InvalidArgumentError, MissingDependencyError
from ..files import check_destination, check_parent, resolved
from ..gid import (
    METHODS,
    GidReport,
    PlanOptions,
    make_plan,
    read_report,
    render_peft,
    render_plan,
    render_report,
    write_json,
)
from ._args import output_option
from ._output import emit, progress_printer

NO_INPUT = (
    "give MODEL_DIR (a Hugging Face model folder to calibrate, with --data FILE) "
    "or --report gid.json (a report to plan from)"
)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", metavar="MODEL_DIR", help="a local Hugging Face model folder to calibrate"
    )
    p.add_argument(
        "--data",
        metavar="FILE",
        help="calibration data: .jsonl ({text, label} lines) or .csv (text, label columns)",
    )
    p.add_argument("--task", choices=("cls", "clm"), default="cls", help="loss: classification or causal LM")
    p.add_argument(
        "--target",
        metavar="NAMES",
        help="comma-separated module names (suffixes), e.g. query,value (default: all linear)",
    )
    p.add_argument("--steps", metavar="N", type=int, default=64, help="calibration batches (default 64)")
    p.add_argument("--batch", metavar="N", type=int, default=8, help="rows per batch (default 8)")
    p.add_argument("--max-len", metavar="N", type=int, default=128, help="tokens per row (default 128)")
    p.add_argument(
        "--layers-per-pass",
        metavar="N",
        type=int,
        help="accumulate this many layers per pass (bounds memory)",
    )
    output_option(
        p, "write the report (schema lorascope.gid/v1) to this JSON file", dest="out", metavar="FILE"
    )
    p.add_argument(
        "--report", metavar="FILE", help="an existing gid.json to plan from (instead of MODEL_DIR)"
    )
    p.add_argument("--plan", choices=METHODS, help="make a plan: ralora, ralora-pro or peft (rank_pattern)")
    p.add_argument(
        "--rank", metavar="R", type=int, default=8, help="r (RaLoRA) or r_ref (RaLoRA-Pro, PEFT); default 8"
    )
    p.add_argument("--alpha", metavar="A", type=float, help="lora_alpha at --rank (default 2·rank)")
    p.add_argument("--n-max", metavar="N", type=int, default=32, help="most blocks per layer (default 32)")
    p.add_argument(
        "--r-min", metavar="R", type=int, default=1, help="RaLoRA-Pro / PEFT: smallest rank (default 1)"
    )
    p.add_argument(
        "--r-max", metavar="R", type=int, default=64, help="RaLoRA-Pro / PEFT: largest rank (default 64)"
    )
    p.add_argument(
        "--plan-out", metavar="FILE", help="write the plan (schema lorascope.gid-plan/v1) to this JSON file"
    )
    p.add_argument("--json", action="store_true", help="print the report (and plan) as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _calibrate(args: argparse.Namespace) -> GidReport:
    if not args.data:
        raise InvalidArgumentError("calibrating MODEL_DIR needs --data FILE")
    try:
        import transformers  # noqa: F401  (gid.hf imports it only when called)

        from ..gid.calibration import CalibrationConfig
        from ..gid.hf import DataOptions, calibrate_model_dir
    except ImportError as e:
        raise MissingDependencyError(
            f"the calibration pass needs torch and transformers ({e.name} is missing): "
            "pip install 'lorascope[train]'"
        ) from None
    targets = [t.strip() for t in args.target.split(",") if t.strip()] if args.target else None
    config = CalibrationConfig(steps=args.steps, layers_per_pass=args.layers_per_pass, rank=args.rank)
    return calibrate_model_dir(
        args.model,
        args.data,
        DataOptions(task=args.task, batch=args.batch, max_len=args.max_len),
        targets=targets,
        config=config,
        progress=progress_printer(not args.quiet and sys.stderr.isatty()),
    )


def _check_args(args: argparse.Namespace) -> PlanOptions:
    if not args.model and not args.report:
        raise InvalidArgumentError(NO_INPUT)
    if args.model and args.report:
        raise InvalidArgumentError("give either MODEL_DIR (calibrate) or --report gid.json (plan), not both")
    if args.report and not args.plan:
        raise InvalidArgumentError("--report needs --plan ralora|ralora-pro|peft")
    if args.plan_out and not args.plan:
        raise InvalidArgumentError("--plan-out needs --plan ralora|ralora-pro|peft")
    if args.steps < 1 or args.batch < 1 or args.max_len < 1:
        raise InvalidArgumentError("--steps, --batch and --max-len must be ≥ 1")
    if args.layers_per_pass is not None and args.layers_per_pass < 1:  # before the model is loaded
        raise InvalidArgumentError("--layers-per-pass must be ≥ 1")
    options = PlanOptions(
        rank=args.rank, alpha=args.alpha, n_max=args.n_max, r_min=args.r_min, r_max=args.r_max
    )
    options.check()  # before any work: the table divides by --rank even without a plan
    for dest in (args.out, args.plan_out):
        if dest:
            check_destination(dest)
            check_parent(dest)
    if args.out and args.plan_out and resolved(args.out) == resolved(args.plan_out):
        # the report would be written and the plan then refused: a half-done run
        raise InvalidArgumentError("-o and --plan-out name the same file; give two paths", path=args.out)
    return options


def run(args: argparse.Namespace) -> int:
    options = _check_args(args)
    report = read_report(args.report) if args.report else _calibrate(args)
    plan = make_plan(report, args.plan, options) if args.plan else None
    if args.out:
        write_json(args.out, report)
    if plan is not None and args.plan_out:
        write_json(args.plan_out, plan)
    if args.json:
        doc = {"report": report.to_json(), "plan": plan.to_json()} if plan else report.to_json()
        emit(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        return 0
    text = render_report(replace(report, rank=args.rank))
    if plan is not None:
        text += "\n" + render_plan(plan)
        if plan.peft is not None:
            text += "\n# ready to paste: the plan as a PEFT LoraConfig\n" + render_peft(plan)
    emit(text)
    return 0
