"""`lorascope gid`: measure each layer's gradient intrinsic dimensionality (GID) and plan RaLoRA.

    lorascope gid MODEL_DIR --data FILE --task cls|clm [--target q,v] [--steps 64] [--batch 8]
                  [--layers-per-pass N] [--out gid.json]     calibration pass (needs torch)
    lorascope gid --report gid.json --plan ralora|ralora-pro|peft [--rank 8] [--plan-out plan.json]

With MODEL_DIR and --plan, the plan is made from the fresh report.  Outputs are written only after
everything succeeded (atomically); an existing output file is refused.
"""

from __future__ import annotations

import argparse
import json

from ..errors import InvalidArgumentError, MissingDependencyError
from ..gid import METHODS, PlanOptions, make_plan, read_report, render_plan, render_report, write_json
from ._output import emit


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a local Hugging Face model directory to calibrate")
    p.add_argument("--data", help="calibration data: .jsonl ({text, label}) or .csv (text, label columns)")
    p.add_argument("--task", choices=("cls", "clm"), default="cls", help="loss: classification or causal LM")
    p.add_argument(
        "--target", help="comma-separated module names (suffixes), e.g. query,value (default: all linear)"
    )
    p.add_argument("--steps", type=int, default=64, help="calibration batches (default 64)")
    p.add_argument("--batch", type=int, default=8, help="rows per batch (default 8)")
    p.add_argument("--max-len", type=int, default=128, help="tokens per row (default 128)")
    p.add_argument("--layers-per-pass", type=int, help="accumulate this many layers per pass (bounds memory)")
    p.add_argument("--out", help="write the report (schema lorascope.gid/v1) to this JSON file")
    p.add_argument("--report", help="an existing gid.json to plan from (instead of MODEL)")
    p.add_argument("--plan", choices=METHODS, help="make a plan: ralora, ralora-pro or peft (rank_pattern)")
    p.add_argument("--rank", type=int, default=8, help="r (RaLoRA) or r_ref (RaLoRA-Pro, PEFT); default 8")
    p.add_argument("--alpha", type=float, help="lora_alpha at --rank (default 2·rank)")
    p.add_argument("--n-max", type=int, default=32, help="most blocks per layer (default 32)")
    p.add_argument("--r-min", type=int, default=1, help="RaLoRA-Pro / PEFT: smallest rank (default 1)")
    p.add_argument("--r-max", type=int, default=64, help="RaLoRA-Pro / PEFT: largest rank (default 64)")
    p.add_argument("--plan-out", help="write the plan (schema lorascope.gid-plan/v1) to this JSON file")
    p.add_argument("--json", action="store_true", help="print the report (and plan) as JSON")
    p.set_defaults(run=run)


def _calibrate(args: argparse.Namespace) -> dict:
    if not args.data:
        raise InvalidArgumentError("calibrating MODEL needs --data FILE")
    try:
        from ..gid.calibration import CalibrationConfig
        from ..gid.hf import calibrate_model_dir
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
        args.task,
        targets=targets,
        batch=args.batch,
        max_len=args.max_len,
        config=config,
    )


def _refuse_existing(*paths: str | None) -> None:
    from pathlib import Path

    for p in paths:
        if p and Path(p).exists():
            raise InvalidArgumentError("output already exists; choose a new path", path=p)


def run(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.report):
        raise InvalidArgumentError("give either MODEL (calibrate) or --report gid.json (plan), not both")
    if args.report and not args.plan:
        raise InvalidArgumentError("--report needs --plan ralora|ralora-pro|peft")
    if args.steps < 1 or args.batch < 1 or args.max_len < 1:
        raise InvalidArgumentError("--steps, --batch and --max-len must be ≥ 1")
    options = PlanOptions(args.rank, args.alpha, args.n_max, args.r_min, args.r_max)
    options.check()  # before any work: the table divides by --rank even without a plan
    _refuse_existing(args.out, args.plan_out)
    report = read_report(args.report) if args.report else _calibrate(args)
    plan = make_plan(report, args.plan, options) if args.plan else None
    if args.out:
        write_json(args.out, report)
    if plan is not None and args.plan_out:
        write_json(args.plan_out, plan)
    if args.json:
        emit(json.dumps({"report": report, "plan": plan} if plan else report, indent=2) + "\n")
    else:
        text = render_report({**report, "rank": args.rank})
        emit(text + ("\n" + render_plan(plan) if plan else ""))
    return 0
