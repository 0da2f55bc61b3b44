"""`GeometryProbe`: the optimisation geometry of a plain torch training loop, as `geometry` events.

Place `record` after `loss.backward()` and after gradient clipping, before `optimizer.step()`:

    probe = GeometryProbe(model, writer, every=10)   # writer: a RunWriter, or a path to open one
    for step in range(max_steps):
        loss = model(x, y); loss.backward()
        pre = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        probe.record(step, loss=loss, grad_norm_preclip=pre)   # a no-op unless step % every == 0
        optimizer.step(); optimizer.zero_grad(set_to_none=True)

Fields (docs/telemetry.md has the table): over the tracked parameters, weight_norm = √Σ‖p‖²,
grad_norm = √Σ‖g‖² of the gradient as it is now (after clipping), cos_grad_weight = ⟨g, w⟩ /
(‖g‖ ‖w‖), grad_to_weight_ratio = grad_norm / weight_norm, spectral_complexity = the mean over the
tracked matrices of effective_rank(σ) / len(σ) (`metrics.effective_rank`, exp of the entropy of
σ/Σσ; a dead matrix, all σ = 0, counts 0).  A parameter without a gradient contributes to the
weights only.  cos is null when either norm is 0, the ratio null when the weight norm is 0.

Cost, fused: one `torch._foreach_norm` over the weights and one over the gradients (float64
results), one dot product per tensor for ⟨g, w⟩, one host transfer of the stacked sums; cos comes
from that dot and the two norms.  The spectra are the larger part (benchmarks/bench_geometry.py).

Scope ("auto" picks "lora" when the model has LoRA layers, else "full"):
  lora  the trainable LoRA factors (`lora_A` / `lora_B`, RaLoRA's); σ of every layer's
        ΔW = scale·B·A from lorascope's exact r×r core (`spectral.lora_singular_values`), k = r.
  full  every parameter with requires_grad (or the tensors given); σ of up to `max_matrices` (4)
        2-D weights with min(m, n) ≤ `max_dim` (512), evenly spaced in parameter order (first to
        last block), embedding tables left out, exact float64 SVD on the CPU.  Why a few small
        ones: an exact SVD is O(m n min(m, n)) (one thread: 288×96 ≈ 2 ms, 512×2048 ≈ 0.3 s,
        4096² ≈ 40 s), and a few matrices spread over the depth follow the trend; a model whose
        2-D weights are all larger logs null (raise `max_dim` to include them).  With four
        512-wide weights a record costs ≈ 1.3 s: on such models raise `every` or lower
        `max_matrices` / `max_dim` to stay within a few percent of step time.
Sharded training (FSDP, DeepSpeed ZeRO-3) would see local shards only: use it unsharded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..metrics import Spectrum, effective_rank
from ..spectral import lora_singular_values
from ..telemetry.schema import SCOPES
from ..telemetry.writer import RunWriter
from .lora import lora_factors, lora_modules, lora_parameters

DEFAULT_EVERY = 10  # measured overhead on the char GPT: docs/telemetry.md, "Geometry probe cost"


@dataclass(frozen=True)
class Geometry:
    """One measurement; the `geometry` event's payload without loss and grad_norm_preclip."""

    weight_norm: float
    grad_norm: float
    cos_grad_weight: float | None
    grad_to_weight_ratio: float | None
    spectral_complexity: float | None
    n_params: int
    scope: str

    def payload(self, loss: float | None = None, grad_norm_preclip: float | None = None) -> dict[str, Any]:
        return {**asdict(self), "grad_norm_preclip": grad_norm_preclip, "loss": loss}


def normalised_effective_rank(sigma: np.ndarray) -> float:
    """effective_rank(σ) / len(σ) in [0, 1]; 0 for a dead (all-zero) spectrum."""
    return effective_rank(Spectrum(sigma, sigma.size)) / sigma.size if sigma.size else 0.0


class GeometryProbe:
    """Measures `Geometry` of the tracked parameters and writes `geometry` (and `train_step`) events."""

    def __init__(
        self,
        model: torch.nn.Module | Any,
        writer: RunWriter | str | Path,
        every: int = DEFAULT_EVERY,
        scope: str = "auto",
        max_matrices: int = 4,
        max_dim: int = 512,
    ):
        if every < 0:
            raise InvalidArgumentError(f"every must be ≥ 0 steps (0 = never), got {every}")
        self.every = every
        self.writer = writer if isinstance(writer, RunWriter) else RunWriter(writer)
        self._owns_writer = not isinstance(writer, RunWriter)
        module = model if isinstance(model, torch.nn.Module) else None
        self._lora = lora_modules(module) if module is not None else []
        self.scope = _resolve_scope(scope, module, bool(self._lora))
        self.params: list[torch.Tensor]
        if self.scope == "lora":
            self.params = [p for _, m, a in self._lora for p in lora_parameters(m, a) if p.requires_grad]
            self.matrices: list[torch.Tensor] = []
        else:
            tensors: Iterable[torch.Tensor] = (
                module.parameters() if module is not None else cast(Iterable, model)
            )
            self.params = _unique([p for p in tensors if p.requires_grad])
            self.matrices = _pick_matrices(module, self.params, max_matrices, max_dim)
        if not self.params:
            raise InvalidArgumentError(f"no trainable parameters to track (scope {self.scope!r})")
        self.n_params = sum(p.numel() for p in self.params)

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def record(
        self,
        step: int,
        loss: float | torch.Tensor | None = None,
        grad_norm_preclip: float | torch.Tensor | None = None,
        lr: float | None = None,
    ) -> dict[str, Any] | None:
        """At a due step: measure, write a `train_step` (when a loss is given; its grad_norm is the
        pre-clip norm when given, as the HF Trainer logs it) and a `geometry` event; returns the
        geometry record as written.  Otherwise returns None at once."""
        if not self.due(step):
            return None
        g = self.measure()
        loss_f, pre = _float(loss), _float(grad_norm_preclip)
        if loss_f is not None:
            grad = pre if pre is not None else g.grad_norm
            self.writer.write("train_step", step, loss=loss_f, lr=_float(lr), grad_norm=grad)
        return self.writer.write("geometry", step, **g.payload(loss_f, pre))

    @torch.no_grad()
    def measure(self) -> Geometry:
        """The geometry now (gradients as the optimizer will receive them)."""
        pairs = [(p, p.grad) for p in self.params if p.grad is not None]
        w_sq = _sum_squares(torch._foreach_norm(self.params, 2, dtype=torch.float64))  # ()
        if pairs:
            g_sq = _sum_squares(torch._foreach_norm([g for _, g in pairs], 2, dtype=torch.float64))
            # float32 dots (exact enough: relative error ~1e-7·√n), summed in float64
            dot = _sum([torch.dot(p.reshape(-1).float(), g.reshape(-1).float()).double() for p, g in pairs])
        else:
            g_sq = dot = torch.zeros((), dtype=torch.float64)
        w_sq_f, g_sq_f, dot_f = torch.stack([w_sq, g_sq.to(w_sq.device), dot.to(w_sq.device)]).tolist()
        wn, gn = math.sqrt(w_sq_f), math.sqrt(g_sq_f)
        return Geometry(
            weight_norm=wn,
            grad_norm=gn,
            cos_grad_weight=dot_f / (wn * gn) if wn > 0 and gn > 0 else None,
            grad_to_weight_ratio=gn / wn if wn > 0 else None,
            spectral_complexity=self._spectral_complexity(),
            n_params=self.n_params,
            scope=self.scope,
        )

    def _spectral_complexity(self) -> float | None:
        if self.scope == "lora":
            sigmas = [lora_singular_values(*lora_factors(m, a)) for _, m, a in self._lora]  # (r,) each
        else:
            sigmas = [
                torch.linalg.svdvals(w.detach().to("cpu", torch.float64)).numpy() for w in self.matrices
            ]
        if not sigmas:
            return None
        return float(np.mean([normalised_effective_rank(s) for s in sigmas]))

    def close(self) -> None:
        """Closes the writer when the probe opened it (a RunWriter handed in stays open)."""
        if self._owns_writer:
            self.writer.close()


def _resolve_scope(scope: str, module: torch.nn.Module | None, has_lora: bool) -> str:
    if scope == "auto":
        return "lora" if has_lora else "full"
    if scope not in SCOPES:
        raise InvalidArgumentError(f"scope must be one of auto, {', '.join(SCOPES)}; got {scope!r}")
    if scope == "lora" and not has_lora:
        what = "the model has no LoRA layers" if module is not None else "pass the model, not its parameters"
        raise InvalidArgumentError(f"scope 'lora' needs LoRA layers: {what}")
    return scope


def _unique(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tied weights (a GPT's embedding and output head) counted once, as `model.parameters()` does."""
    out: dict[int, torch.Tensor] = {}
    for p in params:
        out.setdefault(id(p), p)
    return list(out.values())


def _pick_matrices(
    module: torch.nn.Module | None, params: list[torch.Tensor], k: int, max_dim: int
) -> list[torch.Tensor]:
    """Up to k 2-D weights with min(m, n) ≤ max_dim, evenly spaced in order; embeddings left out."""
    embeddings = set()
    if module is not None:
        embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    cands = [p for p in params if p.ndim == 2 and min(p.shape) <= max_dim and id(p) not in embeddings]
    if k <= 0 or not cands:
        return []
    idx = sorted({round(i) for i in np.linspace(0, len(cands) - 1, min(k, len(cands)))})
    return [cands[i] for i in idx]


def _sum_squares(norms: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ nᵢ² of 0-d float64 norms."""
    return _sum(norms, square=True)


def _sum(values: Sequence[torch.Tensor], square: bool = False) -> torch.Tensor:
    """Σ of 0-d tensors, per device (model-parallel parameters) then on the first device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for v in values:
        by_device.setdefault(v.device, []).append(v)
    stacks = [torch.stack(vs) for vs in by_device.values()]  # (n_on_device,) each
    parts = [(s * s if square else s).sum() for s in stacks]
    first = parts[0].device
    return torch.stack([p.to(first) for p in parts]).sum()


def _float(x: float | torch.Tensor | None) -> float | None:
    if x is None:
        return None
    return float(x.detach().item() if isinstance(x, torch.Tensor) else x)
