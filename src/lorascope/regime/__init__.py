"""`lorascope regime`: which hyperparameter regime a training run is in, read from the geometry of
its first steps (weight norm and its slope and curvature, gradient norm, gradient-to-weight ratio,
gradient–weight cosine, spectral complexity), measured honestly.

    table = feature_table([read_run_data(p) for p in paths], FeatureConfig(early_frac=0.2))
    report = fit_regimes(paths, FitConfig(label_key="meta.regime"))   # LOGO accuracy, tests, DFA
    write_fit(report, "out/")                # regime.json, regime.md, features.csv, regime-model.json
    c = classify_run("run.jsonl", load_model("out/regime-model.json"), "out/regime-model.json")

Modules: logs (a run's geometry series from its log), features (the early window), labels,
classifiers (ridge on one-hot labels, nearest centroid, logistic regression, leave-one-group-out,
batched over label shuffles), stats (DFA, McNemar, entropies, MI, ANOVA), fit, model (the JSON
model file, classification), report_json, render, write, watch (the monitor rule).
scikit-learn and scipy (the `regime` extra) are imported only by the statistics that use them.
"""

from __future__ import annotations

from .features import FEATURE_SETS, FEATURES, FeatureConfig, FeatureRow, FeatureTable, feature_table
from .fit import FIT_SCHEMA, FitConfig, FitReport, fit_regimes
from .logs import RunData, read_run_data
from .model import MODEL_SCHEMA, Classification, RegimeModel, classify_run, load_model
from .report_json import MODEL_FILE, features_csv
from .write import check_out_dir, write_fit

__all__ = [
    "FEATURES",
    "FEATURE_SETS",
    "FIT_SCHEMA",
    "MODEL_FILE",
    "MODEL_SCHEMA",
    "Classification",
    "FeatureConfig",
    "FeatureRow",
    "FeatureTable",
    "FitConfig",
    "FitReport",
    "RegimeModel",
    "RunData",
    "check_out_dir",
    "classify_run",
    "feature_table",
    "features_csv",
    "fit_regimes",
    "load_model",
    "read_run_data",
    "write_fit",
]
