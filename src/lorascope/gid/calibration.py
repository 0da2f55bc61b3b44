"""The calibration pass (torch): accumulate each targeted linear layer's full-weight gradient.

    G_l = Σ_t ∂L_t/∂W_l      over `steps` batches, one float32 (out, in) accumulator per layer

No optimizer and no parameter gradient exists: every parameter is frozen for the pass
(requires_grad restored afterwards), and a targeted `nn.Linear` computes its own weight gradient
from a forward hook (its input x) and a tensor hook on its output (∂L/∂y):
    ∂L/∂W = (∂L/∂y)ᵀ x     (out, N)·(N, in), N = tokens in the batch
which is what autograd would put in W.grad.  For the output to carry a gradient with every
parameter frozen, the hook adds a zero scalar leaf to the layer's input (x + z, z = 0, requires_grad):
values and downstream gradients are unchanged, and backward is asked for z's gradient only.

`layers_per_pass` bounds memory: the targets are split into groups and the batches are replayed
once per group, so only one group's accumulators exist at a time (time × number of passes).
The model runs in eval mode (no dropout) so that the pass is deterministic.  `progress(done, total,
what)` is called after every batch of every pass and after every layer's spectrum (the last call
has done == total).  Spectra are computed
in float64 on the accumulators' device (`torch.linalg.eigvalsh` of the smaller side's Gram, the
same route as `spectra.gradient_singular_values`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..parallel import serial
from .report import starved
from .results import Calibration, GidReport, LayerGid, Memory, Timing
from .spectra import SVD_BELOW, gid_metrics

DEFINITION = "gid = exp(-sum p ln p), p = sigma / sum sigma (Roy & Vetterli), of the summed weight gradient"
LossFn = Callable[[nn.Module, Any], torch.Tensor]
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class CalibrationConfig:
    steps: int = 64  # batches accumulated
    layers_per_pass: int | None = None  # None: every target in one pass
    rank: int = 8  # r for the starvation flag in the report
    model_name: str | None = None


def find_targets(model: nn.Module, targets: Sequence[str] | None) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every nn.Linear whose name is a target, or ends in "." + a target; None:
    every nn.Linear.  A target that matches no linear layer is an error naming it."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if targets is None:
        return linears
    found = [(n, m) for n, m in linears if any(n == t or n.endswith("." + t) for t in targets)]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n, _ in found):
            raise InvalidArgumentError(f"target {t!r} matches no linear layer of the model")
    return found


class _Accumulator:
    """Hooks on a group of linear layers adding (∂L/∂y)ᵀ x into one fp32 accumulator each."""

    def __init__(self, layers: list[tuple[str, nn.Linear]], z: torch.Tensor):
        self.grads = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in layers}  # (out, in)
        self.handles = [m.register_forward_pre_hook(self._pre(z)) for _, m in layers]
        self.handles += [m.register_forward_hook(self._post(n)) for n, m in layers]

    @staticmethod
    def _pre(z: torch.Tensor) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple:
            return (args[0] + z.to(args[0].dtype), *args[1:])  # same values, now part of the graph

        return hook

    def _post(self, name: str) -> Callable:
        acc = self.grads[name]

        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x = args[0].detach()  # (..., in)

            def grad_hook(gy: torch.Tensor) -> None:  # gy: (..., out)
                gy2 = gy.reshape(-1, gy.shape[-1]).float()  # (N, out)
                acc.addmm_(gy2.T, x.reshape(-1, x.shape[-1]).float())  # (out, N) @ (N, in)

            if out.requires_grad:  # not under torch.no_grad()
                out.register_hook(grad_hook)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Ticker:
    """Counts progress events; `done` reaches `total` only on the last one (a batch iterable that
    ends early leaves fewer events than planned)."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, what: str, last: bool = False) -> None:
        self.done = self.total if last else min(self.done + 1, self.total - 1)
        if self.progress is not None:
            self.progress(self.done, self.total, what)

    def labelled(self, template: str) -> Callable[[int], None]:
        """A per-batch callback: `template` with the batch number in its {}."""
        return lambda b: self(template.format(b))


def accumulate(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    layers: list[tuple[str, nn.Linear]],
    steps: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """G per layer over the first `steps` batches (fewer if the iterable ends first); `on_batch(i)`
    after batch i (1-based)."""
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    device = layers[0][1].weight.device
    z = torch.zeros((), device=device, requires_grad=True)
    acc = _Accumulator(layers, z)
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        model.eval()
        done = 0
        for batch in batches:
            if done >= steps:
                break
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise InvalidArgumentError(
                    f"the loss is not finite ({float(loss.detach())}) at calibration step {done + 1}"
                )
            loss.backward(inputs=[z])
            done += 1
            if on_batch is not None:
                on_batch(done)
        if done == 0:
            raise InvalidArgumentError("the calibration data gave no batch")
    finally:
        acc.close()
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(training)
    for name, g in acc.grads.items():
        if not torch.isfinite(g).all():
            raise InvalidArgumentError(f"layer {name}: the accumulated gradient has NaN or inf values")
    return acc.grads


def singular_values(g: torch.Tensor) -> np.ndarray:
    """σ of G in float64 on its own device: SVD when small, else the smaller side's Gram."""
    g = g.double()
    if max(g.shape) <= SVD_BELOW:
        return torch.linalg.svdvals(g).cpu().numpy()
    gram = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g  # (k, k), k = min(out, in)
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)  # (k,) descending
    return ev.sqrt().cpu().numpy()


def layer_gid(name: str, module: nn.Linear, g: torch.Tensor, rank: int) -> LayerGid:
    """One layer's row of the report from its accumulated gradient G (out, in)."""
    metrics = gid_metrics(singular_values(g))
    w = module.weight.detach()
    out, inn = g.shape
    return LayerGid(
        name=name,
        shape=(int(out), int(inn)),
        **vars(metrics),
        importance=float((w.double() * g.double()).abs().mean()),
        starved=starved(metrics.gid, rank),
    )


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn,
    targets: Sequence[str] | None = None,
    config: CalibrationConfig | None = None,
    progress: Progress | None = None,
) -> GidReport:
    """The GID report (schema lorascope.gid/v1) of `model` on `batches` (re-iterable when
    `layers_per_pass` splits the targets: every pass replays the same batches)."""
    config = config or CalibrationConfig()
    if config.steps < 1 or (config.layers_per_pass is not None and config.layers_per_pass < 1):
        raise InvalidArgumentError("steps and layers_per_pass must be ≥ 1")
    layers = find_targets(model, targets)
    if not layers:
        raise InvalidArgumentError("the model has no linear layer to calibrate")
    group = config.layers_per_pass or len(layers)
    passes = math.ceil(len(layers) / group)
    per_pass = min(config.steps, len(batches)) if isinstance(batches, Sized) else config.steps
    tick = _Ticker(progress, passes * per_pass + len(layers))
    rows: list[LayerGid] = []
    pass_s, spectra_s, acc_bytes = 0.0, 0.0, 0
    cuda = layers[0][1].weight.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with serial():  # backward passes (torch) and spectra (LAPACK) within the thread policy's cores
        for i, start in enumerate(range(0, len(layers), group)):
            part = layers[start : start + group]
            t0 = time.perf_counter()
            on_batch = tick.labelled(f"pass {i + 1}/{passes}, batch {{}}/{per_pass}")
            grads = accumulate(model, batches, loss_fn, part, config.steps, on_batch)
            t1 = time.perf_counter()
            acc_bytes = max(acc_bytes, sum(g.numel() * 4 for g in grads.values()))
            for n, m in part:
                rows.append(layer_gid(n, m, grads.pop(n), config.rank))
                tick(f"spectrum {len(rows)}/{len(layers)} {n}", last=len(rows) == len(layers))
            pass_s, spectra_s = pass_s + t1 - t0, spectra_s + time.perf_counter() - t1
    return GidReport(
        model=config.model_name,
        definition=DEFINITION,
        rank=config.rank,
        calibration=Calibration(
            steps=config.steps,
            layers_per_pass=config.layers_per_pass,
            passes=passes,
            device=str(layers[0][1].weight.device),
        ),
        timing=Timing(pass_s=pass_s, spectra_s=spectra_s),
        memory=Memory(
            accumulator_bytes=acc_bytes, peak_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None
        ),
        layers=tuple(rows),
    )
