"""Append an audit to a lorascope run log (`lorascope.telemetry`, schema lorascope.telemetry/v1).

Contract: `append_to_run(report, path)` writes through `RunWriter`, which only ever appends.  The
audit joins the *last* run in the log (its `run_id`, at the largest step that run logged), so
`lorascope monitor` sees it as that run's final spectral snapshot; a log that does not exist yet,
or holds no run, gets a new run: `run_start` (meta.source = "lorascope audit"), the snapshot,
`run_end` (status ok).  The snapshot is one `spectral` event whose layers carry the fields the
training callback writes (name, rank, sigma_max, stable_rank, energy_rank@τ, utilisation,
top1_share) plus the audit's own (effective_rank, suggested_rank, module_type, policy ks, udr);
its summary carries the callback's means plus `source: "audit"` and an `audit` object with the
report's summary, suggested ranks and policy table.  A malformed log is an error before anything
is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..telemetry import RunWriter, read_log
from .audit import AuditReport, LayerReport

LAYER_FIELDS = ("effective_rank", "suggested_rank", "module_type", "policies", "udr", "udr_f")


def _layer(x: LayerReport, energy_keys: list[str]) -> dict[str, Any]:
    d = x.to_dict()
    energy = x.metrics["frobenius"] ** 2
    out = {
        "name": x.name,
        "rank": x.info.rank,
        "sigma_max": x.metrics["sigma_max"],
        "stable_rank": x.metrics["stable_rank"],
        "utilisation": x.metrics["utilisation"],
        "top1_share": x.metrics["sigma_max"] ** 2 / energy if energy > 0 else 0.0,
    }
    out.update({k: d[k] for k in energy_keys})
    out.update({k: d[k] for k in LAYER_FIELDS if k in d})
    return out


def _summary(report: AuditReport, layers: list[dict[str, Any]]) -> dict[str, Any]:
    live = [x for x in layers if x["stable_rank"] > 0]

    def mean(key: str) -> float | None:
        return sum(x[key] for x in live) / len(live) if live else None

    s, g = report.summary, report.suggestions
    audit: dict[str, Any] = {k: v for k, v in s.items() if k != "blocks"}
    audit["blocks"] = {k: s["blocks"][k] for k in ("n_blocks", "hhi", "unassigned_share", "top")}
    audit["suggested_rank"] = {
        "threshold": g["threshold"],
        "median": g["median"]["rank"],
        "p90": g["p90"]["rank"],
    }
    if report.policies is not None:
        audit["policies"] = report.policies["global"]
    return {
        "n_layers": len(layers),
        "n_dead": len(layers) - len(live),
        "mean_stable_rank": mean("stable_rank"),
        "mean_utilisation": mean("utilisation"),
        "mean_top1_share": mean("top1_share"),
        "source": "audit",
        "adapter": report.source.get("path"),
        "audit": audit,
    }


def append_to_run(report: AuditReport, path: str | Path) -> tuple[str, int]:
    """Append the audit to the run log at `path` (module docstring); returns (run_id, events written)."""
    p = Path(path)
    run_id, step = None, None
    if p.exists():
        log = read_log(p)
        if log.run_ids:
            run_id = log.run_ids[-1]
            steps = [e.step for e in log.run(run_id) if e.step is not None]
            step = max(steps) if steps else None
    keys = [k for k in report.layers[0].metrics if k.startswith("energy_rank@")] if report.layers else []
    layers = [_layer(x, keys) for x in report.layers]
    written = 0
    with RunWriter(p, run_id=run_id, process_index=0) as writer:
        if run_id is None:
            meta = {"source": "lorascope audit", "adapter": report.source.get("path"), "framework": None}
            writer.write("run_start", None, meta=meta)
            written += 1
        writer.write("spectral", step, layers=layers, summary=_summary(report, layers))
        written += 1
        if run_id is None:
            writer.write("run_end", None, status="ok", reason="audit only")
            written += 1
        return writer.run_id, written
