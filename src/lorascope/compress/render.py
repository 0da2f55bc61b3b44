"""Text view of a CompressReport (JSON is `CompressReport.to_json`)."""

from __future__ import annotations

from ..textsafe import clean
from .plan import CompressReport


def to_text(report: CompressReport, show_layers: bool = False) -> str:
    s = report.summary()
    dest = report.output or "(dry run, nothing written)"
    lines = [
        f"lorascope compress  {report.source or '<memory>'}  →  {dest}",
        f"mode: {report.mode.kind} {report.mode.value}",
        f"layers: {s['n_layers']} ({s['n_changed']} truncated)",
        f"params: {s['params']:,} → {s['new_params']:,}  (−{100 * s['params_reduction']:.1f} %)",
        f"bytes:  {s['bytes']:,} → {s['new_bytes']:,}  (−{100 * s['bytes_reduction']:.1f} %)",
        f"kept energy: {100 * s['kept_energy']:.2f} %   "
        f"‖ΔW−ΔW′‖_F/‖ΔW‖_F: {s['rel_frobenius_error']:.4f} "
        f"(worst layer {s['max_layer_rel_error']:.4f})",
    ]
    if show_layers:
        width = max((len(x.name) for x in report.layers), default=5)
        lines.append(f"{'layer':<{width}}  rank → new  kept%   rel.err")
        for x in report.layers:
            kept = 100 * x.kept_energy
            lines.append(f"{x.name:<{width}}  {x.rank:>4} → {x.new_rank:<4} {kept:6.2f}  {x.rel_error:.4f}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(clean(line) for line in lines) + "\n"  # names come from files
