"""RaLoRA layers (torch): a block-diagonal LoRA beside a frozen nn.Linear, applied by module name.

    y = W x + b + scale · diag(B₁A₁, …, B_nA_n) x,   Aᵢ: (r, in/n), Bᵢ: (out/n, r), scale = alpha/r

The n blocks run as one batched matmul (`torch.bmm` over the block axis), never a Python loop.
Initialisation as PEFT's LoRA: A Kaiming-uniform (per block, fan-in in/n), B zero, so ΔW = 0 at
the start.  `apply_plan(model, plan)` swaps every planned nn.Linear (by its module name) for a
`RaLoRALinear` and, by default, freezes everything else except `trainable` modules (a classifier
head); the result trains with the HF Trainer like any model.  `to_adapter` gives the layers as a
lorascope `Adapter` (block-diagonal factors, exact), which `save_ralora` writes in the RaLoRA format
and `formats.save(..., format="peft")` writes as a standard PEFT LoRA of rank n·r.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..formats import save
from ..formats.ralora import block_diagonal, diagonal_blocks
from ..types import Adapter, LayerInfo, LoraDelta, frozen_mapping
from .results import GidPlan, PlanLayer


class RaLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, blocks: int, alpha: float):
        super().__init__()
        out, inn = base.weight.shape
        if r < 1 or blocks < 1 or inn % blocks or out % blocks:
            raise InvalidArgumentError(
                f"RaLoRA blocks={blocks} must divide the layer's ({out}, {inn}) and r ≥ 1"
            )
        self.base, self.r, self.blocks, self.scale = base, r, blocks, alpha / r
        self.alpha = float(alpha)
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.ralora_A = nn.Parameter(
            torch.empty(blocks, r, inn // blocks, device=dev, dtype=dt)
        )  # (n, r, in/n)
        self.ralora_B = nn.Parameter(
            torch.zeros(blocks, out // blocks, r, device=dev, dtype=dt)
        )  # (n, out/n, r)
        bound = 1.0 / math.sqrt(inn // blocks)  # kaiming_uniform(a=√5) on a (r, in/n) block
        nn.init.uniform_(self.ralora_A, -bound, bound)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, n = x.shape[:-1], self.blocks
        xb = x.reshape(-1, n, self.in_features // n).transpose(0, 1)  # (n, N, in/n)
        h = torch.bmm(xb.to(self.ralora_A.dtype), self.ralora_A.transpose(1, 2))  # (n, N, r)
        d = torch.bmm(h, self.ralora_B.transpose(1, 2))  # (n, N, out/n)
        d = d.transpose(0, 1).reshape(*lead, self.out_features)  # (..., out)
        return self.base(x) + (self.scale * d).to(x.dtype)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(down, up): diag(A₁…A_n) (n·r, in) and diag(B₁…B_n) (out, n·r) in float64."""
        a = self.ralora_A.detach().double().cpu().numpy()  # (n, r, in/n)
        b = self.ralora_B.detach().double().cpu().numpy()  # (n, out/n, r)
        return block_diagonal(a), block_diagonal(b)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in), dense: for tests and small layers."""
        down, up = self.factors()
        return torch.from_numpy(self.scale * (up @ down))


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def apply_plan(
    model: nn.Module,
    plan: GidPlan | Mapping[str, PlanLayer],
    *,
    trainable: Sequence[str] = (),
    freeze: bool = True,
) -> list[str]:
    """Replace every layer of the plan (or of a table name -> PlanLayer) by a RaLoRALinear; returns
    the names replaced.

    Each planned name must be an nn.Linear of the planned shape: a plan made for another model is
    refused before anything changes.  `freeze`: every other parameter is frozen except those of
    modules whose name is, or ends in ".", one of `trainable`."""
    table = plan.layers if isinstance(plan, GidPlan) else plan
    modules = dict(model.named_modules())
    for name, x in table.items():
        m = modules.get(name)
        if not isinstance(m, nn.Linear):
            raise InvalidArgumentError(
                f"plan layer {name!r} is not a linear layer of this model (a plan for another model?)"
            )
        if tuple(m.weight.shape) != tuple(x.shape):
            raise InvalidArgumentError(
                f"plan layer {name!r} has shape {list(x.shape)} but the model's is {list(m.weight.shape)} "
                "(a plan for another model?)"
            )
        out, inn = m.weight.shape
        if inn % x.blocks or out % x.blocks:
            raise InvalidArgumentError(
                f"plan layer {name!r}: blocks={x.blocks} does not divide ({out}, {inn})"
            )
    if freeze:
        for n, p in model.named_parameters():
            p.requires_grad_(any(n == t or n.startswith(t + ".") or f".{t}." in f".{n}" for t in trainable))
    for name, x in table.items():
        parent, child = _parent(model, name)
        setattr(parent, child, RaLoRALinear(modules[name], int(x.r), int(x.blocks), float(x.lora_alpha)))
    return list(table)


def ralora_modules(model: nn.Module) -> list[tuple[str, RaLoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, RaLoRALinear)]


def to_adapter(model: nn.Module, *, base_model: str | None = None) -> Adapter:
    """The model's RaLoRA layers as an in-memory lorascope Adapter (block-diagonal factors, exact)."""
    deltas = []
    for name, m in ralora_modules(model):
        down, up = m.factors()  # (n·r, in), (out, n·r)
        extras = {"algo": "lora", "blocks": m.blocks, "block_rank": m.r, "alpha": m.alpha}
        info = LayerInfo(
            name,
            "linear",
            m.blocks * m.r,
            m.out_features,
            m.in_features,
            m.scale,
            "fp32",
            extras=frozen_mapping(extras),
        )
        deltas.append(LoraDelta(info, down.astype(np.float32), up.astype(np.float32)))
    if not deltas:
        raise InvalidArgumentError("the model has no RaLoRA layer")
    config = {"base_model_name_or_path": base_model} if base_model else {}
    return Adapter.from_deltas(deltas, config=frozen_mapping(config))


def save_ralora(model: nn.Module, dest: str | Path, *, base_model: str | None = None) -> Path:
    """Write the model's RaLoRA layers as a RaLoRA directory (formats/ralora.py)."""
    return save(to_adapter(model, base_model=base_model), dest, format="ralora")


def export_peft(model: nn.Module, dest: str | Path, *, base_model: str | None = None) -> Path:
    """Write the RaLoRA layers as a standard PEFT LoRA of rank n·r per layer (same ΔW, exact up to
    the float32 storage of the factors), loadable by `PeftModel.from_pretrained`."""
    adapter = to_adapter(model, base_model=base_model)
    plain = [
        LoraDelta(
            LayerInfo(
                d.info.name,
                "linear",
                d.info.rank,
                d.info.out_features,
                d.info.in_features,
                d.info.scale,
                "fp32",
            ),
            d.down,
            d.up,
        )
        for d in adapter.iter_deltas()
    ]
    return save(Adapter.from_deltas(plain, config=adapter.config), dest, format="peft")


def load_ralora(model: nn.Module, path: str | Path, *, trainable: Sequence[str] = ()) -> list[str]:
    """Apply a saved RaLoRA adapter to `model` (the layers' factors copied in); returns the names."""
    from ..formats import load

    adapter = load(path, format="ralora")
    table = {
        x.name: PlanLayer(
            r=int(x.extras["block_rank"]),
            blocks=int(x.extras["blocks"]),
            lora_alpha=float(x.extras["alpha"]),
            shape=(x.out_features, x.in_features),
        )
        for x in adapter.layers
    }
    names = apply_plan(model, table, trainable=trainable)
    modules = dict(model.named_modules())
    for x in adapter.layers:
        d, m = adapter.delta(x.name), modules[x.name]
        a, b = (
            diagonal_blocks(d.down, m.blocks),
            diagonal_blocks(d.up, m.blocks),
        )  # (n, r, in/n), (n, out/n, r)
        assert a is not None and b is not None  # the reader built them block-diagonal
        with torch.no_grad():
            m.ralora_A.copy_(torch.from_numpy(np.ascontiguousarray(a)))
            m.ralora_B.copy_(torch.from_numpy(np.ascontiguousarray(b)))
    return names
