"""extract and verify-merge: a full checkpoint's update as a LoRA adapter, and a merged checkpoint
checked against its adapter.

checkpoint.py (sharded safetensors read one tensor at a time, keys matched across prefixes),
survey.py (what changed, and what extract does with it), lowrank.py (dense truncated SVD, exact
distances to a factored matrix), extract.py (the extract pipeline and its report), diagnose.py
(verify-merge's rounding bounds and diagnosis), verify.py (the verify pass and its report),
render.py (text views; JSON is each report's `to_json`).
"""

from .extract import ExtractOptions, ExtractReport, extract_checkpoint
from .verify import VerifyOptions, VerifyReport, verify_merge

__all__ = [
    "ExtractOptions",
    "ExtractReport",
    "VerifyOptions",
    "VerifyReport",
    "extract_checkpoint",
    "verify_merge",
]
