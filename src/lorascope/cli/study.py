"""`lorascope study`: parse flags, call lorascope.study.run_study, print a summary."""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import InvalidArgumentError
from ..study import StudyOptions, run_study
from ..study.render import to_text
from ..study.sources import parse_size
from ._args import output_option


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="adapter folders (searched recursively), adapter files, .txt/.list files of SOURCEs "
        "(every line an existing path or a repo id), or Hugging Face repo ids (ORG/NAME[@REV] or "
        "hf:ORG/NAME: cache first, download when online)",
    )
    p.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FILE",
        dest="lists",
        help="a file of SOURCEs, one a line, read whatever it holds (missing paths fail as 'not found'); "
        "repeatable",
    )
    output_option(p, "study folder: journals and tables", dest="out", required=True, metavar="DIR")
    p.add_argument("--workers", type=int, metavar="N", help="parallel audits (default: every core)")
    p.add_argument("--resume", action="store_true", help="continue a study in DIR; skip what is done")
    p.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="process pool (default) or Ray tasks"
    )
    p.add_argument(
        "--max-size",
        metavar="BYTES",
        help="adapters whose config + weights exceed this fail as 'too large' (e.g. 500M, 2G)",
    )
    p.add_argument("--hub-cache", metavar="DIR", help="huggingface_hub cache folder (default: its own)")
    p.add_argument(
        "--no-parquet", action="store_true", help="no layers.parquet (layers.csv holds the same rows)"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when any adapter failed")
    p.add_argument("--json", action="store_true", help="print study.json instead of the summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run)


def _progress(enabled: bool):
    """`finished/total` on stderr, redrawn at most every 0.1 s and at the last adapter."""
    if not enabled:
        return None
    last = [0.0]

    def show(finished: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if finished < total and now - last[0] < 0.1:
            return
        last[0] = now
        sys.stderr.write(f"\r  {finished}/{total} adapters, {failed} failed")
        sys.stderr.flush()

    return show


def run(args: argparse.Namespace) -> int:
    if not args.sources and not args.lists:
        raise InvalidArgumentError("give at least one SOURCE (or --list FILE)")
    try:
        max_size = parse_size(args.max_size) if args.max_size is not None else None
    except ValueError as e:
        raise InvalidArgumentError(f"--max-size: {e}") from None
    options = StudyOptions(
        workers=args.workers,
        executor=args.executor,
        resume=args.resume,
        max_size=max_size,
        hub_cache=args.hub_cache,
        lists=tuple(args.lists),
        parquet=not args.no_parquet,
        progress=_progress(not args.quiet and sys.stderr.isatty()),
    )
    result = run_study(args.sources, args.out, options)
    if options.progress is not None:
        sys.stderr.write("\n")
    if args.json:
        sys.stdout.write(result.out.joinpath("study.json").read_text(encoding="utf-8"))
    else:
        sys.stdout.write(to_text(result.tables, str(result.out), result.seconds, result.n_skipped))
    if result.n_failed:
        print(
            f"lorascope: {result.n_failed} adapter(s) failed; reasons in {result.out / 'failures.jsonl'}",
            file=sys.stderr,
        )
    return 1 if args.strict and result.n_failed else 0
