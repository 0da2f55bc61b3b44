"""`lorascope gid`: rank starvation measured from gradients, and RaLoRA / RaLoRA-Pro plans and layers.

Torch-free here: the GID metrics of a gradient's spectrum, the typed results (`GidReport`,
`GidPlan`: frozen, with `to_json`/`from_json`), plans from a report, reading a model folder's
config and a data file, reading and rendering reports.  The calibration pass and the RaLoRA
layers need torch and are imported only when first used (`calibrate`, `apply_plan`,
`RaLoRALinear`, `save_ralora`, `export_peft`, ...).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .inputs import check_model_dir, read_rows
from .plan import blocks_for, make_plan, peft_plan, pro_ranks, ralora_plan, ralora_pro_plan
from .report import read_plan, read_report, render_peft, render_plan, render_report, write_json
from .results import (
    METHODS,
    Calibration,
    GidPlan,
    GidReport,
    LayerGid,
    Memory,
    PeftPatterns,
    PlanLayer,
    PlanOptions,
    Timing,
)
from .spectra import GidMetrics, energy_erank, gid_metrics, gradient_singular_values

_TORCH = {
    "CalibrationConfig": "calibration",
    "accumulate": "calibration",
    "calibrate": "calibration",
    "find_targets": "calibration",
    "layer_gid": "calibration",
    "calibrate_model_dir": "hf",
    "RaLoRALinear": "layers",
    "apply_plan": "layers",
    "export_peft": "layers",
    "load_ralora": "layers",
    "ralora_modules": "layers",
    "save_ralora": "layers",
    "to_adapter": "layers",
}

__all__ = [
    "METHODS",
    "Calibration",
    "GidMetrics",
    "GidPlan",
    "GidReport",
    "LayerGid",
    "Memory",
    "PeftPatterns",
    "PlanLayer",
    "PlanOptions",
    "Timing",
    "blocks_for",
    "check_model_dir",
    "energy_erank",
    "gid_metrics",
    "gradient_singular_values",
    "make_plan",
    "peft_plan",
    "pro_ranks",
    "ralora_plan",
    "ralora_pro_plan",
    "read_plan",
    "read_report",
    "read_rows",
    "render_peft",
    "render_plan",
    "render_report",
    "write_json",
    *_TORCH,
]


def __getattr__(name: str) -> Any:
    if name in _TORCH:
        return getattr(import_module(f".{_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
