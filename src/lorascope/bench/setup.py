"""What a bench checks before it writes anything (the device, --out), its environment record, and
the process start time that its "done in Ns" counts from.  A refused start writes nothing."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgumentError, MissingDependencyError, UnsupportedError
from ..files import read_json, write_json
from ..version import __version__
from .config import BenchConfig, config_hash
from .results import Environment

DEVICES = ("cpu", "cuda", "mps")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    device: str = "cpu"
    resume: bool = False
    quiet: bool = False
    started: float | None = None  # epoch seconds the wall time counts from (None: process start)
    executor: str = "local"  # "local" (this process) or "ray" (stages as Ray tasks; executor.py)


def process_start() -> float:
    """Epoch seconds at which this process started, so a reported wall time includes the
    interpreter's start-up and the imports of torch and transformers (seconds on a small CPU)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except (ImportError, OSError):
        pass
    try:  # Linux without psutil: the start tick in /proc/self/stat after the boot time
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(ln for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def check_stack() -> None:
    """torch, transformers and peft import, or one MissingDependencyError naming the missing one
    (the bench imports them next anyway; a bare ImportError would be an internal error)."""
    import importlib

    for name in ("torch", "transformers", "peft"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingDependencyError(
                f"the bench trains models: it needs torch, transformers and peft ({name} is missing): "
                "pip install 'lorascope[bench]'"
            ) from None


def check_device(device: str) -> None:
    """Refuse a device this machine's torch cannot use, before anything is loaded or written."""
    import torch

    if device not in DEVICES:
        raise InvalidArgumentError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        why = "sees no CUDA device" if torch.version.cuda else "built without CUDA"
        raise UnsupportedError(
            f"cuda is not available on this machine (torch {torch.__version__} {why})",
            hint="run with --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU",
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UnsupportedError(
            f"mps is not available on this machine (torch {torch.__version__})",
            hint="mps needs Apple silicon and macOS 12.3 or later; run with --device cpu",
        )


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise InvalidArgumentError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise MissingDependencyError("--executor ray needs Ray: pip install 'ray>=2.9'") from None


def _git_commit() -> str | None:
    try:
        p = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def environment(cfg: BenchConfig, device: str) -> Environment:
    import peft
    import torch
    import transformers

    return Environment(
        lorascope=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        peft=peft.__version__,
        device=device,
        threads=torch.get_num_threads(),
        git_commit=_git_commit(),
        config_hash=config_hash(cfg),
    )


def check_out(cfg: BenchConfig, opts: BenchOptions) -> bool:
    """A new bench needs an empty (or new) --out; --resume needs the same config as the one it
    resumes.  Returns whether --out already holds this bench."""
    marker = opts.out / "bench_config.json"
    if marker.is_file():
        if not opts.resume:
            raise InvalidArgumentError(
                "already holds a bench; pass --resume to continue it or choose another --out", path=opts.out
            )
        stored = read_json(marker)
        if not isinstance(stored, dict) or stored.get("config_hash") != config_hash(cfg):
            raise InvalidArgumentError(
                "holds a bench run with another config (or other --seeds/--smoke); "
                "resume with the same arguments or choose another --out",
                path=opts.out,
            )
        return True
    if opts.out.exists() and (not opts.out.is_dir() or any(opts.out.iterdir())):
        raise InvalidArgumentError("exists and is not an empty folder; choose another --out", path=opts.out)
    return False


def prepare_out(cfg: BenchConfig, opts: BenchOptions) -> None:
    if check_out(cfg, opts):
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": "lorascope.bench_config/v1",
        "config_hash": config_hash(cfg),
        "source": cfg.source,
        "config": cfg.to_dict(),
    }
    write_json(opts.out / "bench_config.json", doc)
