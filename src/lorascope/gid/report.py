"""gid.json (schema lorascope.gid/v1) and plan files: build, write atomically, read back checked, render.

gid.json:
  {"schema": "lorascope.gid/v1", "model": str, "definition": str,
   "calibration": {"steps", "batch", "layers_per_pass", "passes", "device"},
   "timing": {"pass_s", "spectra_s"}, "memory": {"accumulator_bytes", "peak_bytes" (CUDA only)},
   "rank": r used to flag starvation,
   "layers": [{"name", "shape": [out, in], "gid", "gid_energy", "numerical_rank", "stable_rank",
               "energy_rank_90", "grad_norm", "importance", "starved"}]}

A layer is *starved* at rank r when its gid ≥ 4·r: a rank-r LoRA can follow at most a quarter of
the directions its full gradient spans (the RaLoRA rule would give it ≥ 4 blocks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import FormatError, InvalidArgumentError
from ..files import json_loads, write_text
from ..textsafe import clean
from .plan import PLAN_SCHEMA

SCHEMA = "lorascope.gid/v1"
STARVED_FACTOR = 4.0
_LAYER_FIELDS = ("name", "shape", "gid", "importance")


def starved(gid: float, rank: int) -> bool:
    return gid >= STARVED_FACTOR * rank


def write_json(dest: str | Path, data: Mapping[str, Any]) -> Path:
    dest = Path(dest)
    if dest.is_dir():
        raise InvalidArgumentError("output is a directory; give a file name", path=dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_text(dest, json.dumps(data, indent=2) + "\n")
    return dest


def _load(path: str | Path, schema: str) -> dict[str, Any]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InvalidArgumentError("no such file", path=p) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", path=p) from None
    data = json_loads(raw, p, "not a JSON file ({})")  # also deep nesting and huge integers: one line
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise FormatError(f"not a {schema} file (its 'schema' field differs)", path=p)
    return data


def read_report(path: str | Path) -> dict[str, Any]:
    """A gid.json, every layer checked for the fields plans need."""
    data = _load(path, SCHEMA)
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise FormatError("'layers' must be a non-empty list", path=path)
    for i, x in enumerate(layers):
        ok = isinstance(x, dict) and all(k in x for k in _LAYER_FIELDS)
        ok = ok and isinstance(x["shape"], list) and len(x["shape"]) == 2
        ok = ok and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x["gid"], x["importance"])
        )
        if not ok:
            raise FormatError(f"layer {i} needs name, shape [out, in], gid and importance", path=path)
    return data


def read_plan(path: str | Path) -> dict[str, Any]:
    data = _load(path, PLAN_SCHEMA)
    layers = data.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise FormatError("'layers' must be a non-empty object", path=path)
    for name, x in layers.items():
        ok = isinstance(x, dict) and all(isinstance(x.get(k), int) and x[k] >= 1 for k in ("r", "blocks"))
        if (
            not ok
            or not isinstance(x.get("shape"), list)
            or not isinstance(x.get("lora_alpha"), (int, float))
        ):
            raise FormatError(
                f"layer {name}: needs integer r ≥ 1, blocks ≥ 1, lora_alpha and shape", path=path
            )
    return data


def render_report(report: Mapping[str, Any], limit: int | None = None) -> str:
    """A table: one row per layer, starved layers flagged; then a one-line summary."""
    r = int(report.get("rank", 8))
    rows = [("layer", "shape", "GID", "GID(σ²)", "stable", "k90", "importance", "")]
    for x in report["layers"][:limit]:
        flag = f"STARVED (GID/r = {x['gid'] / r:.0f})" if starved(x["gid"], r) else ""
        rows.append(
            (
                clean(str(x["name"])),
                "×".join(map(str, x["shape"])),
                f"{x['gid']:.1f}",
                f"{x.get('gid_energy', 0.0):.1f}",
                f"{x.get('stable_rank', 0.0):.2f}",
                str(x.get("energy_rank_90", "")),
                f"{x['importance']:.3g}",
                flag,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    gids = sorted(x["gid"] for x in report["layers"])
    n_starved = sum(starved(g, r) for g in gids)
    lines.append(
        f"{len(gids)} layers; GID min {gids[0]:.1f}, median {gids[len(gids) // 2]:.1f}, max {gids[-1]:.1f}; "
        f"starved at r={r} (GID ≥ {STARVED_FACTOR:g}·r): {n_starved}"
    )
    return "\n".join(lines) + "\n"


def render_plan(plan: Mapping[str, Any]) -> str:
    rows = [("layer", "r", "blocks", "equiv. rank", "GID", "note")]
    for name, x in plan["layers"].items():
        rows.append(
            (
                clean(name),
                str(x["r"]),
                str(x["blocks"]),
                str(x["equivalent_rank"]),
                f"{x['gid']:.1f}",
                clean(x.get("note", "")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(
        f"{plan['method']}: {plan['params']:,} trainable parameters vs {plan['lora_params']:,} for "
        f"LoRA r={plan['options']['rank']} ({plan['params_vs_lora']:.3f}×)"
    )
    return "\n".join(lines) + "\n"
