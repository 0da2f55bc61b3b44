"""Peak RSS and wall time of `lorascope monitor` on a large generated run log.

    python benchmarks/bench_monitor_memory.py --mb 300 [--log /tmp/big.jsonl] [--src DIR]

Writes a lorascope.telemetry/v1 log of about --mb megabytes (one run: a train_step per step with
loss, lr, grad_norm and epoch; an eval every 500 steps; a 64-layer spectral snapshot every 2,000
steps), then times `lorascope monitor LOG --json` in a child process (GNU time's peak RSS).
`--src` runs another checkout's sources (its `src/` folder) on the same log, e.g. the code before
the streaming reader.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _child import run_child  # noqa: E402


def write_log(path: Path, megabytes: float) -> int:
    """A deterministic log of about `megabytes` MB; returns its number of lines."""
    target, n, step = megabytes * 1e6, 0, 0
    layers = [f"model.layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(64)]
    with open(path, "w", encoding="utf-8") as fh:

        def rec(event: str, s: int | None, **payload) -> None:
            nonlocal n
            head = {"schema": "lorascope.telemetry/v1", "ts": 1.7e9 + s if s else 1.7e9, "run_id": "big"}
            fh.write(json.dumps({**head, "event": event, "step": s, **payload}, separators=(",", ":")) + "\n")
            n += 1

        rec("run_start", 0, meta={"model": "m", "dataset": "d"})
        rec("config", 0, lora={"r": 16}, training={"learning_rate": 2e-4})
        while fh.tell() < target:
            step += 1
            loss = 2.0 * math.exp(-step / 40_000) + 0.3 + 0.05 * math.sin(step)
            rec(
                "train_step", step, loss=loss, lr=2e-4, grad_norm=1.0 + 0.1 * math.cos(step), epoch=step / 5e3
            )
            if step % 500 == 0:
                rec(
                    "eval",
                    step,
                    split="eval",
                    metrics={"loss": loss * 1.1, "accuracy": 0.5 + 0.4 * (1 - math.exp(-step / 1e5))},
                )
            if step % 2000 == 0:
                snap = [
                    {"name": name, "rank": 16, "sigma_max": 1.0, "stable_rank": 3.0, "energy_rank@0.9": 5,
                     "utilisation": 3.0 / 16, "top1_share": 0.4}
                    for name in layers
                ]  # fmt: skip
                rec("spectral", step, layers=snap, summary={"n_layers": 64})
        rec("run_end", step, status="ok", reason=None)
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=300.0)
    p.add_argument("--log", type=Path, default=Path("/tmp/lorascope-monitor-big.jsonl"))
    p.add_argument("--src", type=Path, action="append", help="a src/ folder to run (repeatable)")
    args = p.parse_args()
    if not args.log.is_file() or abs(args.log.stat().st_size / 1e6 - args.mb) > 0.05 * args.mb:
        lines = write_log(args.log, args.mb)
        print(f"wrote {args.log}: {args.log.stat().st_size / 1e6:.0f} MB, {lines:,} lines")
    here = Path(__file__).resolve().parents[1] / "src"
    for src in args.src or [here]:
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, "-m", "lorascope", "monitor", str(args.log), "--json"]
        wall, rss = run_child(cmd, env=env)
        print(f"{src}: {wall:.1f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
