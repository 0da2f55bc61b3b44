"""Compress: rewrite an adapter so that each layer's ΔW is its best rank-k approximation.

plan.py (rank modes and the CompressReport), compress.py (truncation and the file pipeline),
render.py (text view; JSON is `CompressReport.to_json`).
"""

from .compress import CompressOptions, compress_adapter, compress_file, compressed_lazy
from .plan import CompressReport, LayerResult, RankMode, plan_ranks

__all__ = [
    "CompressOptions",
    "CompressReport",
    "LayerResult",
    "RankMode",
    "compress_adapter",
    "compress_file",
    "compressed_lazy",
    "plan_ranks",
]
