"""Overhead of GeometryProbe on a plain training loop: the tiny char GPT, probe on / off interleaved.

    python benchmarks/bench_geometry.py --repeats 7 --json benchmarks/results/geometry.json

Each repeat trains `--block` steps with the probe off and `--block` steps with it on (every
`--every` steps), in alternating order, on one torch thread; the overhead is the ratio of the
medians minus 1, in wall time and in process CPU time (CPU time is far less disturbed by other
jobs on a shared machine).  The probe's own CPU time is also measured directly (every `record`
call timed with the thread's CPU clock, the spectral part separately), which gives the lowest-noise
figure: record CPU / every / step CPU.  Scopes: `full` (every parameter, the spectra of four 2-D
block weights) on the plain model, and `lora` (PEFT LoRA r=8 on the attention and MLP input
projections, the exact r×r core) with `--lora`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "examples"))

import char_gpt as cg  # noqa: E402

from lorascope.integrations.probe import GeometryProbe  # noqa: E402
from lorascope.telemetry import RunWriter  # noqa: E402


class TimedProbe(GeometryProbe):
    """Records the CPU time (this thread's: immune to the scheduler's pauses on a busy machine) of
    each due `record` and of its spectral part."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.record_s: list[float] = []
        self.spectral_s: list[float] = []

    def record(self, step, **kw):
        if not self.due(step):
            return None
        t = time.thread_time()
        out = super().record(step, **kw)
        self.record_s.append(time.thread_time() - t)
        return out

    def _spectral_complexity(self):
        t = time.thread_time()
        out = super()._spectral_complexity()
        self.spectral_s.append(time.thread_time() - t)
        return out


def _model(lora: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = cg.CharGPT(cg.GPTConfig(vocab_size=65))
    if not lora:
        return model
    import peft

    cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"])
    return peft.get_peft_model(model, cfg)


def _block(model, opt, probe, steps: int, gen) -> tuple[float, float]:
    """(wall s, CPU s) of `steps` training steps; probe None = off."""
    data = torch.randint(0, 65, (200_000,), generator=gen)
    w0, c0 = time.perf_counter(), time.process_time()
    for step in range(steps):
        x, y = cg.batch(data, 16, 64, gen)  # (B, T) each
        loss = model(x, y)
        loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if probe is not None:
            probe.record(step, loss=loss, grad_norm_preclip=pre)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - w0, time.process_time() - c0


def measure(lora: bool, every: int, repeats: int, steps: int, out: Path) -> dict:
    model = _model(lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    _block(model, opt, None, 10, gen)  # warm-up
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    with RunWriter(out) as writer:
        probe = TimedProbe(model, writer, every=every)
        for rep in range(repeats):
            for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                t = _block(model, opt, probe if mode == "on" else None, steps, gen)
                (on if mode == "on" else off).append(t)
    wall_on, wall_off = (statistics.median(t[0] for t in x) for x in (on, off))
    cpu_on, cpu_off = (statistics.median(t[1] for t in x) for x in (on, off))
    step_s = cpu_off / steps  # CPU time, as the record's
    record_s = statistics.median(probe.record_s)
    return {
        "scope": probe.scope,
        "every": every,
        "n_params": probe.n_params,
        "step_cpu_ms_off": 1e3 * step_s,
        "step_wall_ms_off": 1e3 * wall_off / steps,
        "record_ms_median": 1e3 * record_s,
        "spectral_ms_median": 1e3 * statistics.median(probe.spectral_s),
        "overhead_direct": record_s / every / step_s,
        "overhead_wall": wall_on / wall_off - 1,
        "overhead_cpu": cpu_on / cpu_off - 1,
        "blocks_wall_on": [t[0] for t in on],
        "blocks_wall_off": [t[0] for t in off],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--block", type=int, default=50, help="training steps per timed block")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--lora", action="store_true", help="also the PEFT LoRA variant")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path("/tmp") if Path("/tmp").is_dir() else Path(".")
    rows = []
    for lora in (False, True) if a.lora else (False,):
        for every in a.every:
            row = measure(lora, every, a.repeats, a.block, tmp / "bench_geometry.jsonl")
            rows.append(row)
            print(
                f"{row['scope']:4s} every {every:3d}: step {row['step_cpu_ms_off']:.1f} ms CPU, record "
                f"{row['record_ms_median']:.2f} ms (spectral {row['spectral_ms_median']:.2f}); overhead "
                f"direct {row['overhead_direct']:.2%}, wall {row['overhead_wall']:+.2%}, "
                f"CPU {row['overhead_cpu']:+.2%}",
                file=sys.stderr,
            )
    if a.json:
        meta = {"torch": torch.__version__, "threads": 1, "repeats": a.repeats, "block_steps": a.block}
        a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
