"""Copies of regime run logs whose geometry `grad_norm` is the pre-clip norm (a sensitivity check).

    python examples/regime_preclip_copy.py RUNS_DIR OUT_DIR
    lorascope regime fit OUT_DIR/*.jsonl --label-key meta.regime -o FIT_DIR

The geometry event's `grad_norm` is the gradient after clipping (what the optimizer receives);
`grad_norm_preclip` is the norm before.  This writes each log with `grad_norm` (and the
gradient-to-weight ratio) taken from the pre-clip norm, so that the same analysis can be repeated
with the other reading of "gradient norm" (docs/regime-experiment.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(src: Path, dst: Path) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    for log in sorted(src.glob("*.jsonl")):
        lines = []
        for line in log.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            pre = rec.get("grad_norm_preclip")
            if rec.get("event") == "geometry" and isinstance(pre, (int, float)):
                rec["grad_norm"] = pre
                w = rec.get("weight_norm")
                if isinstance(w, (int, float)) and w > 0:
                    rec["grad_to_weight_ratio"] = pre / w
            lines.append(json.dumps(rec))
        (dst / log.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(list(dst.glob('*.jsonl')))} logs to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
