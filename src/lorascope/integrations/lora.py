"""LoRA layers of a live torch model: which modules hold LoRA factors, and their factors as numpy.

Torch only (no transformers), so the Trainer callback (`hf.py`) and the plain-loop probe
(`probe.py`) share it.  PEFT LoRA linear layers (`lora_A[adapter]`, `lora_B[adapter]`,
`scaling[adapter]`) and lorascope's RaLoRA layers (`lorascope.gid.RaLoRALinear`, adapter "ralora")
are recognised; other PEFT tuners (LoHa, IA3, embeddings' `lora_embedding_A`) are not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

RALORA = "ralora"  # the adapter name reported for lorascope.gid RaLoRA layers


def lora_modules(model: Any) -> list[tuple[str, Any, str]]:
    """(name, module, adapter) for every PEFT LoRA linear layer with an active adapter, and every
    RaLoRA layer (`lorascope.gid.RaLoRALinear`, adapter "ralora")."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "ralora_A", None), torch.nn.Parameter):
            out.append((name, mod, RALORA))
            continue
        a = getattr(mod, "lora_A", None)
        if a is None or not hasattr(a, "keys"):
            continue
        for adapter in a.keys():
            if adapter in mod.lora_B and adapter in getattr(mod, "scaling", {}):
                out.append((name, mod, adapter))
    return out


def lora_factors(mod: Any, adapter: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(down (r, in), up (out, r), scale); a RaLoRA layer's block-diagonal factors have r = n·r_block,
    and their singular values are the union of the blocks' (exact)."""
    if adapter == RALORA:
        down, up = mod.factors()
        return down, up, float(mod.scale)
    with torch.no_grad():
        down = mod.lora_A[adapter].weight.detach().float().cpu().numpy()  # (r, in)
        up = mod.lora_B[adapter].weight.detach().float().cpu().numpy()  # (out, r)
    return down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1), float(mod.scaling[adapter])


def lora_parameters(mod: Any, adapter: str) -> list[torch.nn.Parameter]:
    """The trainable factor tensors of one LoRA layer (what the optimizer updates)."""
    if adapter == RALORA:
        return [mod.ralora_A, mod.ralora_B]
    return [mod.lora_A[adapter].weight, mod.lora_B[adapter].weight]
