"""How stable is a GID report in the calibration size?  MiniLM-L6 on Rotten Tomatoes, 2/4/8 steps.

    python examples/gid_vs_steps.py --out examples/gid-minilm-rt/gid_vs_steps.json

Calibrates on the first 2, 4 and 8 of the batches `gid_experiment.py` calibrates on (same head
initialisation, same order), and adds that script's 16-step gid.json when it exists: per step count
and layer, gid, gid_energy and stable_rank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import load_task  # noqa: E402
from gid_experiment import TARGETS, base_model_path, batches, load_base  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer

    from lorascope.gid import CalibrationConfig, calibrate

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(base_model_path())
    split = load_task("sentiment", seed=0)
    data = batches(tok, split.train_texts, split.train_labels, 16, 32, 10_000, 8)
    out = {}
    for k in (2, 4, 8):
        torch.manual_seed(0)
        _, model = load_base()
        rep = calibrate(model, data, lambda m, b: m(**b).loss, TARGETS, CalibrationConfig(steps=k))
        out[str(k)] = {
            x.name: {f: getattr(x, f) for f in ("gid", "gid_energy", "stable_rank")} for x in rep.layers
        }
    full = args.out.parent / "gid.json"
    if full.exists():
        rep = json.loads(full.read_text())
        key = str(rep["calibration"]["steps"])
        out[key] = {x["name"]: {f: x[f] for f in ("gid", "gid_energy", "stable_rank")} for x in rep["layers"]}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
