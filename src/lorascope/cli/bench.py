"""`lorascope bench CONFIG -o DIR`: probe → audit → retrain → evaluate → seeds → policy.

Needs torch, transformers and peft (`pip install 'lorascope[bench]'`); they are imported only once
the config is valid, so config errors come back at once.  Exit codes: 0 done, 1 with --ci when no
variant is policy-compliant, 2 on bad input (nothing is written then).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidArgumentError
from ._output import emit

PRESET_NAMES = ("minilm-rt", "mistral-gsm8k")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None


def _candidates(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-candidates must be an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"--max-candidates must be ≥ 1, got {n} "
            "(0 would retrain nothing; list fewer compression.variants instead)"
        )
    return n


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="bench config, YAML or JSON (default: --preset minilm-rt)")
    p.add_argument("--preset", choices=PRESET_NAMES, help="a shipped config (minilm-rt runs offline on CPU)")
    p.add_argument(
        "-o",
        "--out",
        "--output",
        "--output-dir",
        dest="out",
        type=Path,
        metavar="DIR",
        help="output folder (new, or the one to --resume); not needed with --print-config",
    )
    p.add_argument(
        "--seeds", type=_seeds, help="comma-separated seeds, e.g. 42,123,456 (overrides the config)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny random BERT, 24 steps, 2 seeds: a quick end-to-end check"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue a bench in --out; finished stages are kept"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "mps"),
        default="cpu",
        help="where models train and evaluate (default cpu); checked before anything is written",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="run stages in this process (default) or as Ray tasks: probes, then every (seed, variant) "
        "training at once, one GPU each on --device cuda (RAY_ADDRESS names a cluster)",
    )
    p.add_argument(
        "--max-candidates",
        type=_candidates,
        metavar="N",
        help="retrain at most N ≥ 1 distinct rank plans per seed, in variant order (the rest are skipped)",
    )
    p.add_argument("--ci", action="store_true", help="exit 1 when no variant is policy-compliant")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument(
        "--json", action="store_true", help="print bench_aggregate.json instead of the Markdown summary"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchOptions, load_config, with_overrides

    if args.config is not None and args.preset is not None:
        raise InvalidArgumentError("give a CONFIG file or --preset, not both")
    preset = args.preset if args.config is not None or args.preset else "minilm-rt"  # the embedded default
    cfg = load_config(args.config, preset=preset)
    cfg = with_overrides(cfg, seeds=args.seeds, smoke=args.smoke, max_candidates=args.max_candidates)
    if args.print_config:
        emit(json.dumps(cfg.to_dict(), indent=2) + "\n")
        return 0
    if args.out is None:
        raise InvalidArgumentError("bench needs -o/--out DIR (a new folder, or the one to --resume)")
    from ..bench import run_bench
    from ..bench.render import aggregate_md

    opts = BenchOptions(
        out=args.out, device=args.device, resume=args.resume, quiet=args.quiet, executor=args.executor
    )
    result = run_bench(cfg, opts)
    emit(result.to_json() + "\n" if args.json else aggregate_md(result))
    return 1 if args.ci and not result.any_compliant else 0
