"""The fair test's summary: runs.jsonl -> summary.json (schema lorascope.gid-trial/v1, which
`lorascope report` renders) and results.md, with the pre-registered comparisons and verdicts.

Rule (docs/gid.md, "A fair test", fixed before the first run): for each comparison A vs B, the
differences of test accuracy over the paired (task, seed) runs (same batches, same seed) get a
two-sided paired t-test; the four p-values are Holm-adjusted.  "A beats B" when A's mean is higher
on both tasks and the adjusted p < 0.05; "B beats A" for the mirror case; otherwise "no evidence of
a difference".  Wilcoxon signed-rank p-values are reported beside it, not used in the rule.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from gid_fair_test import METHODS, chosen_lrs, read_runs

SCHEMA = "lorascope.gid-trial/v1"
ALPHA = 0.05
COMPARISONS = (  # (A, B, question): pre-registered, in this order
    ("ralora-pro", "lora", "does RaLoRA-Pro beat uniform LoRA?"),
    ("ralora", "lora", "does RaLoRA beat uniform LoRA?"),
    ("peft-gid", "lora", "does the GID PEFT rank pattern beat uniform LoRA?"),
    ("peft-gid", "peft-random", "does GID's placement beat the same ranks placed at random?"),
)
LABELS = {
    "lora": "LoRA r=8",
    "ralora": "RaLoRA r=8",
    "ralora-pro": "RaLoRA-Pro r_ref=8",
    "peft-gid": "PEFT rank_pattern from GID",
    "peft-random": "same ranks, random layers",
    "full": "full fine-tuning",
}


def final_runs(rows: list[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(task, method) -> seed -> the run at the chosen learning rate (seed 0's from selection)."""
    lrs, first = chosen_lrs(rows), min_seed(rows)
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        key = (r["task"], r["method"])
        if key in lrs and r["lr"] == lrs[key] and (r["phase"] == "final" or r["seed"] == first):
            out.setdefault(key, {})[r["seed"]] = r
    return out


def min_seed(rows: list[dict]) -> int:
    return min(r["seed"] for r in rows if r["phase"] == "select")


def holm(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def compare(runs: dict, tasks: list[str], a: str, b: str) -> dict:
    from scipy import stats

    pairs = [
        (t, s, runs[(t, a)][s]["test_acc"], runs[(t, b)][s]["test_acc"])
        for t in tasks
        for s in sorted(set(runs.get((t, a), {})) & set(runs.get((t, b), {})))
    ]
    diffs = [x - y for _, _, x, y in pairs]
    per_task = {
        t: statistics.mean([x - y for tt, _, x, y in pairs if tt == t])
        for t in tasks
        if any(p[0] == t for p in pairs)
    }
    out = {"a": a, "b": b, "n_pairs": len(pairs), "diff_mean": statistics.mean(diffs) if diffs else None,
           "per_task_diff": per_task, "pairs": [[t, s, x, y] for t, s, x, y in pairs]}  # fmt: skip
    if len(diffs) >= 2 and any(d != 0 for d in diffs):
        t_res = stats.ttest_rel([p[2] for p in pairs], [p[3] for p in pairs])
        sd = statistics.stdev(diffs)
        half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
        t_stat = float(t_res.statistic)  # ±inf when every difference is the same non-zero number
        out.update(p=float(t_res.pvalue), t=t_stat if math.isfinite(t_stat) else None,
                   ci95=[out["diff_mean"] - half, out["diff_mean"] + half])  # fmt: skip
        out["wilcoxon_p"] = float(stats.wilcoxon(diffs).pvalue)
    else:
        out.update(p=1.0, t=0.0, ci95=[out["diff_mean"] or 0.0] * 2, wilcoxon_p=1.0)
    return out


def verdict(c: dict, tasks: list[str]) -> str:
    diffs = [c["per_task_diff"].get(t) for t in tasks]
    if any(d is None for d in diffs) or c["p_holm"] >= ALPHA:
        return "no evidence of a difference"
    if all(d > 0 for d in diffs):
        return f"{c['a']} beats {c['b']}"
    if all(d < 0 for d in diffs):
        return f"{c['b']} beats {c['a']}"
    return "no evidence of a difference"


def method_rows(rows: list[dict], runs: dict, tasks: list[str]) -> list[dict]:
    lrs = chosen_lrs(rows)
    grid = {}
    for r in rows:
        if r["phase"] == "select":
            grid.setdefault((r["task"], r["method"]), {})[str(r["lr"])] = r["val_acc"]
    out = []
    for t in tasks:
        for m in METHODS:
            seeds = runs.get((t, m))
            if not seeds:
                continue
            accs = [seeds[s]["test_acc"] for s in sorted(seeds)]
            steps = [p for p, _ in seeds[min(seeds)]["val_curve"]]
            curve = [
                [p, statistics.mean(seeds[s]["val_curve"][i][1] for s in seeds)] for i, p in enumerate(steps)
            ]
            out.append({
                "task": t, "method": m, "label": LABELS[m], "lr": lrs[(t, m)],
                "trainable_params": seeds[min(seeds)]["trainable_params"],
                "seeds": sorted(seeds), "test_per_seed": accs, "test_mean": statistics.mean(accs),
                "test_std": statistics.stdev(accs) if len(accs) > 1 else None,
                "val_curve_mean": curve, "selection_val": grid.get((t, m), {}),
            })  # fmt: skip
    return out


def plateau(methods: list[dict]) -> dict:
    """LoRA's mean validation accuracy at the last evaluation against the one before."""
    out = {}
    for m in methods:
        if m["method"] == "lora" and len(m["val_curve_mean"]) >= 2:
            (s1, a1), (s2, a2) = m["val_curve_mean"][-2:]
            out[m["task"]] = {
                "step_before": s1,
                "val_before": a1,
                "step_last": s2,
                "val_last": a2,
                "rise": a2 - a1,
            }
    return out


def build_summary(out: Path) -> dict:
    rows = read_runs(out / "runs.jsonl")
    if not rows:
        raise SystemExit(f"{out / 'runs.jsonl'}: no finished runs yet")
    tasks = sorted({r["task"] for r in rows}, key=lambda t: ["sentiment", "party"].index(t))
    runs = final_runs(rows)
    ran = {m for _, m in runs}  # a run of a subset of the methods compares only what it has
    comparisons = [compare(runs, tasks, a, b) | {"question": q} for a, b, q in COMPARISONS if {a, b} <= ran]
    for c, p in zip(comparisons, holm([c["p"] for c in comparisons]), strict=True):
        c["p_holm"] = p
        c["verdict"] = verdict(c, tasks)
    methods = method_rows(rows, runs, tasks)
    first = rows[0]
    return {
        "schema": SCHEMA,
        "title": "Rank placed by gradient dimensionality vs uniform LoRA, equal parameters",
        "protocol": {k: first[k] for k in ("steps", "batch", "max_len")} | {
            "model": "all-MiniLM-L6-v2, first 3 blocks",
            "lr_grid": sorted({r["lr"] for r in rows if r["phase"] == "select"}),
            "alpha": ALPHA, "test": "two-sided paired t over (task, seed), Holm over 4 comparisons"},
        "tasks": tasks,
        "methods": methods,
        "comparisons": comparisons,
        "plateau": plateau(methods),
        "runs": len(rows),
        "cpu_s_total": sum(r["cpu_s"] for r in rows),
        "all_finite": all(r.get("finite", True) for r in rows),
    }  # fmt: skip


def markdown(doc: dict) -> str:
    lines = [
        "| task | method | chosen lr | trainable params | test accuracy (mean ± std) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for m in doc["methods"]:
        std = f"{m['test_std']:.4f}" if m["test_std"] is not None else "n/a"
        seeds = ", ".join(f"{a:.4f}" for a in m["test_per_seed"])
        lines.append(
            f"| {m['task']} | {m['label']} | {m['lr']:g} | {m['trainable_params']:,} "
            f"| {m['test_mean']:.4f} ± {std} | {seeds} |"
        )
    head = (
        "| comparison | pairs | mean diff | 95 % CI | paired t p | Holm p | Wilcoxon p | per task | verdict |"
    )
    lines += ["", head, "|---|---|---|---|---|---|---|---|---|"]
    for c in doc["comparisons"]:
        per = ", ".join(f"{t} {d:+.4f}" for t, d in c["per_task_diff"].items())
        lines.append(
            f"| {c['a']} vs {c['b']} | {c['n_pairs']} | {c['diff_mean']:+.4f} "
            f"| [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] "
            f"| {c['p']:.3g} | {c['p_holm']:.3g} | {c['wilcoxon_p']:.3g} | {per} | {c['verdict']} |"
        )
    lines.append("")
    for t, p in doc["plateau"].items():
        lines.append(f"LoRA validation accuracy on {t}: {p['val_before']:.4f} at step {p['step_before']}, "
                     f"{p['val_last']:.4f} at step {p['step_last']} (rise {p['rise']:+.4f}).")  # fmt: skip
    lines.append(
        f"\n{doc['runs']} runs, {doc['cpu_s_total'] / 3600:.2f} CPU-hours in training and evaluation."
    )
    return "\n".join(lines) + "\n"


def summarise(out: Path) -> str:
    doc = build_summary(out)
    text = markdown(doc)
    (out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "results.md").write_text(text)
    return text
