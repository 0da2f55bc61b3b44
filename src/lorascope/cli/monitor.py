"""`lorascope monitor RUN.jsonl`: summary + rule alerts for a run log; `--fail-on` gates CI."""

from __future__ import annotations

import argparse
import dataclasses

from ..errors import InvalidArgumentError
from ..monitor import Thresholds, monitor_run
from ..monitor.render import to_text
from ._args import output_option
from ._output import emit

# flag -> Thresholds field, for the thresholds users most often tune.
_FLAGS = {
    "window": int,
    "spike_factor": float,
    "eval_patience": int,
    "gap_ratio": float,
    "low_util": float,
    "collapse_jump": float,
}


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        help="run log (JSONL) written by LorascopeCallback / RunWriter, or by Gradience's TelemetryWriter",
    )
    p.add_argument("--run-id", help="which run of an appended log (default: the last)")
    p.add_argument(
        "--json", action="store_true", help="machine-readable output (schema lorascope.monitor/v1)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="every alert with context, thresholds, trend")
    p.add_argument(
        "--fail-on",
        choices=("info", "warning", "error"),
        help="exit 1 when an alert of this severity or worse fires (default: always exit 0)",
    )
    defaults = Thresholds()
    for name, kind in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(
            flag, type=kind, metavar="X", help=f"threshold {name} (default {getattr(defaults, name)})"
        )
    p.add_argument(
        "--regime-model",
        metavar="MODEL",
        help="opt-in rule: with --expect-regime, warn (REGIME_MISMATCH) when the run's early geometry "
        "matches another regime of this model (regime-model.json from `lorascope regime fit`)",
    )
    p.add_argument("--expect-regime", metavar="NAME", help="the regime the run is labelled with")
    output_option(p, "write the report to this file (atomically) instead of stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.verbose and args.json:
        raise InvalidArgumentError(
            "--verbose widens the text report; --json already holds every alert and threshold"
        )
    overrides = {name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None}
    if overrides.get("window", 1) < 1 or overrides.get("eval_patience", 1) < 1:
        raise InvalidArgumentError("--window and --eval-patience must be ≥ 1")
    thresholds = dataclasses.replace(Thresholds(), **overrides)
    if (args.regime_model is None) != (args.expect_regime is None):
        raise InvalidArgumentError("--regime-model and --expect-regime go together")
    report = monitor_run(args.path, thresholds, run_id=args.run_id)
    if args.regime_model:
        from ..regime import load_model
        from ..regime.watch import regime_alerts

        extra = regime_alerts(args.path, load_model(args.regime_model), args.regime_model, args.expect_regime)
        report = dataclasses.replace(report, alerts=(*report.alerts, *extra))
    text = report.to_json() + "\n" if args.json else to_text(report, verbose=args.verbose)
    emit(text, args.output, inputs=(args.path,))
    return report.exit_code(args.fail_on)
