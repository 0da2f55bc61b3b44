"""`lorascope regime`: which hyperparameter regime a run is in, from its early training geometry.

    lorascope regime features RUN.jsonl... [--early-frac 0.2] [-o features.csv] [--json]
    lorascope regime fit RUN.jsonl... (--labels FILE | --label-key meta.KEY) [--group-key meta.seed]
                         --out DIR [--permutations 2000] [--drop-excluded] ...
    lorascope regime classify RUN.jsonl --model MODEL [--json]

Every input is read and checked before anything is written; excluded runs are listed on stderr.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidArgumentError
from ._args import output_option
from ._output import emit, progress_printer

SETS = ("geometry_6", "geometry_7", "loss", "spectral")


def _sets(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="regime_command", metavar="SUBCOMMAND")
    f = sub.add_parser("features", help="one row of early-window features per run (or why it has none)")
    f.add_argument("logs", nargs="+", metavar="RUN.jsonl", help="run logs with geometry events")
    f.add_argument(
        "--early-frac", type=float, default=0.2, help="window: step ≤ FRAC × last step (default 0.2)"
    )
    f.add_argument(
        "--sets",
        type=_sets,
        default=SETS,
        help=f"feature sets whose features a run must give (default {','.join(SETS)})",
    )
    output_option(f, "write the table as CSV to this file (atomically)")
    f.add_argument("--json", action="store_true", help="print the table as JSON")
    f.set_defaults(run=run_features)

    t = sub.add_parser("fit", help="leave-one-group-out accuracy, tests, DFA; writes DIR and a model")
    t.add_argument("logs", nargs="+", metavar="RUN.jsonl", help="run logs with geometry events")
    lab = t.add_mutually_exclusive_group(required=True)
    lab.add_argument("--labels", metavar="FILE", help="CSV (run,label) or JSON/YAML mapping run -> label")
    lab.add_argument("--label-key", metavar="KEY", help="label from each log, e.g. meta.regime")
    t.add_argument(
        "--group-key", default="meta.seed", metavar="KEY", help="folds: one per value (default meta.seed)"
    )
    output_option(t, "output folder (new or empty)", dest="out", required=True, metavar="DIR")
    t.add_argument(
        "--early-frac", type=float, default=0.2, help="window: step ≤ FRAC × last step (default 0.2)"
    )
    t.add_argument(
        "--sets", type=_sets, default=SETS, help=f"feature sets, comma-separated (default {','.join(SETS)})"
    )
    t.add_argument(
        "--model-set", default="geometry_7", help="feature set of the model file (default geometry_7)"
    )
    t.add_argument(
        "--permutations", type=int, default=2000, metavar="N", help="label shuffles (default 2000)"
    )
    t.add_argument(
        "--mi-shuffles", type=int, default=50, metavar="N", help="shuffles of the summed-MI null (default 50)"
    )
    t.add_argument("--seed", type=int, default=0, help="random seed of the shuffles (default 0)")
    t.add_argument(
        "--drop-excluded", action="store_true", help="fit on the runs that give features; list the rest"
    )
    t.add_argument("--json", action="store_true", help="print regime.json to stdout too")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    t.set_defaults(run=run_fit)

    c = sub.add_parser("classify", help="the regime a run's early geometry matches, by a fitted model")
    c.add_argument("log", metavar="RUN.jsonl", help="a run log with geometry events")
    c.add_argument("--model", required=True, help="regime-model.json written by `regime fit`")
    c.add_argument(
        "--json", action="store_true", help="machine-readable output (schema lorascope.regime-classify/v1)"
    )
    c.set_defaults(run=run_classify)
    p.set_defaults(run=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _warn_excluded(table) -> None:  # noqa: ANN001
    from ..regime.render import excluded_lines

    for line in excluded_lines(table):
        print(line, file=sys.stderr)


def run_features(args: argparse.Namespace) -> int:
    from ..regime import FeatureConfig, feature_table, features_csv, read_run_data
    from ..regime.render import features_text

    if args.json and args.output:
        raise InvalidArgumentError("give --json or -o FILE (CSV), not both")
    config = FeatureConfig(early_frac=args.early_frac, sets=args.sets)
    table = feature_table([read_run_data(p) for p in args.logs], config)
    _warn_excluded(table)
    if args.json:
        from ..jsontext import dumps

        emit(dumps(table.to_dict()) + "\n")
    elif args.output:
        emit(features_csv(table), args.output, inputs=tuple(args.logs))
    else:
        emit(features_text(table))
    return 0


def run_fit(args: argparse.Namespace) -> int:
    from ..regime import FeatureConfig, FitConfig, check_out_dir, fit_regimes, write_fit
    from ..regime.render import fit_text

    check_out_dir(args.out)
    config = FitConfig(
        features=FeatureConfig(early_frac=args.early_frac, sets=args.sets),
        label_key=args.label_key,
        labels_path=args.labels,
        group_key=args.group_key,
        permutations=args.permutations,
        mi_shuffles=args.mi_shuffles,
        seed=args.seed,
        model_set=args.model_set,
        drop_excluded=args.drop_excluded,
    )
    show = progress_printer(sys.stderr.isatty() and not args.quiet)
    report = fit_regimes(list(args.logs), config, show)
    _warn_excluded(report.table)
    write_fit(report, args.out)
    emit(report.to_json() + "\n" if args.json else fit_text(report, args.out))
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from ..regime import classify_run, load_model
    from ..regime.render import classify_text

    model = load_model(args.model)
    result = classify_run(args.log, model, args.model)
    for f, v, lo, hi in result.out_of_range if args.json else ():
        print(f"warning: {f} = {v:.6g} is outside the training range [{lo:.6g}, {hi:.6g}]", file=sys.stderr)
    emit(result.to_json() + "\n" if args.json else classify_text(result))
    return 0
