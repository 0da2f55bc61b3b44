"""The `regime.json` document (schema `lorascope.regime/v1`, docs/regime.md) and `features.csv`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..version import __version__
from .classifiers import CLASSIFIERS
from .features import FeatureTable

if TYPE_CHECKING:
    from .fit import FitReport

MODEL_FILE = "regime-model.json"


def _num(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _mean_std(values: list[float]) -> dict[str, Any]:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 and mean is not None else None
    return {"n": n, "mean": mean, "std": std, "values": values}


def _sets_doc(r: FitReport) -> dict[str, Any]:
    h = r.entropy
    sets = {}
    for s in r.sets:
        ce = s.log_loss_logistic
        sets[s.name] = {
            "features": list(s.features),
            "classifiers": {
                kind: {
                    "accuracy": res.accuracy,
                    "n_correct": res.n_correct,
                    "n": len(r.labels),
                    "p_value": res.p_value,
                    "confusion": [list(row) for row in res.confusion],
                    "predictions": list(res.predictions),
                }
                for kind, res in s.classifiers.items()
            },
            "conditional_entropy": {
                "logistic_nats": _num(ce),
                "logistic_reduction": _num(1 - ce / h) if h > 0 else None,
                "ridge_softmax_nats": _num(s.log_loss_ridge_softmax),
                "ridge_softmax_reduction": _num(1 - s.log_loss_ridge_softmax / h) if h > 0 else None,
            },
            "mutual_information": {
                "cv_logistic_nats": _num(h - ce),
                "summed_marginal": s.summed_mi.to_dict(),
            },
        }
    return sets


def _dfa_doc(r: FitReport) -> dict[str, Any]:
    by = {
        name: {
            lab: _mean_std([a for a, l2 in zip(alphas, r.labels, strict=True) if l2 == lab and a is not None])
            for lab in r.classes
        }
        for name, alphas in (("alpha", r.dfa.alphas), ("alpha_diff", r.dfa.alphas_diff))
    }
    return {
        "series": "spectral_complexity",
        "by_regime": by["alpha"],
        "anova": r.dfa.anova.to_dict(),
        "differences": {"by_regime": by["alpha_diff"], "anova": r.dfa.anova_diff.to_dict()},
    }


def fit_document(r: FitReport) -> dict[str, Any]:
    c = r.config
    kept = r.table.kept
    return {
        "schema": "lorascope.regime/v1",
        "lorascope_version": __version__,
        "config": {
            "early_frac": c.features.early_frac,
            "min_records": c.features.min_records,
            "sets": list(c.features.sets),
            "label_key": c.label_key,
            "labels_file": c.labels_path,
            "group_key": c.group_key,
            "permutations": c.permutations,
            "mi_shuffles": c.mi_shuffles,
            "ridge_alpha": c.ridge_alpha,
            "logistic_C": c.logistic_c,
            "seed": c.seed,
            "model_set": c.model_set,
            "drop_excluded": c.drop_excluded,
        },
        "classes": list(r.classes),
        "n_runs": len(kept),
        "n_groups": len(set(r.groups)),
        "entropy_nats": r.entropy,
        "runs": [
            {
                "path": row.path,
                "run_id": row.run_id,
                "label": lab,
                "group": grp,
                "n_records": row.n_records,
                "window_end": row.window_end,
                "finished": row.finished,
                "features": {f: row.values.get(f) for f in c.features.needed},
                "dfa_alpha": a,
                "dfa_alpha_diff": ad,
            }
            for row, lab, grp, a, ad in zip(
                kept, r.labels, r.groups, r.dfa.alphas, r.dfa.alphas_diff, strict=True
            )
        ],
        "excluded": [
            {"path": row.path, "run_id": row.run_id, "label": lab, "reason": row.excluded}
            for row, lab in zip(r.table.excluded, r.excluded_labels, strict=True)
        ],
        "sets": _sets_doc(r),
        "mcnemar": {
            kind: [{"first": a, "second": b, **m.to_dict()} for a, b, m in r.mcnemar[kind]]
            for kind in CLASSIFIERS
        },
        "dfa": _dfa_doc(r),
        "model": MODEL_FILE,
    }


def features_csv(table: FeatureTable, labels: Mapping[str, str | None] | None = None) -> str:
    """One row per run: path, run_id, [label,] n_records, window_end, excluded reason, features."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(table.config.needed)
    head = [
        "path",
        "run_id",
        *(["label"] if labels is not None else []),
        "n_records",
        "window_end",
        "excluded",
    ]
    w.writerow(head + names)
    for row in table.rows:
        lab = [labels.get(row.path) or ""] if labels is not None else []
        vals = ["" if row.values.get(n) is None else repr(row.values[n]) for n in names]
        w.writerow([row.path, row.run_id, *lab, row.n_records, row.window_end, row.excluded or "", *vals])
    return buf.getvalue()
