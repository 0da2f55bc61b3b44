"""Calibrate a Hugging Face model folder on a data file (what `lorascope gid MODEL --data` runs).

The folder and the data are checked first (`inputs.py`: one line for an adapter folder, a folder
without a model config, a bad row), before transformers loads anything.  --task cls loads
AutoModelForSequenceClassification with as many labels as the data has (its head is freshly
initialised when the checkpoint has none: its gradient still flows to every targeted layer);
--task clm loads AutoModelForCausalLM and uses the next-token loss with padding masked.  A model
that is not causal (an encoder such as BERT, which transformers will still load as a "causal LM")
is refused for --task clm: its next-token loss sees the very tokens it predicts, so its gradients
would not be a language-modelling signal.  Causality is tested, not guessed from the model type:
changing the last token of a probe must leave the logits of every earlier position unchanged.
Batches are the first steps·batch rows in file order, truncated to `max_len` tokens.  Everything
runs on CUDA when available, else CPU.  transformers is imported on first call only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import FormatError, InvalidArgumentError, UnsupportedError
from ..hfquiet import hf_quiet
from .calibration import CalibrationConfig, Progress, calibrate
from .inputs import check_model_dir, read_rows
from .results import GidReport

TASKS = ("cls", "clm")
HEAD_SEED = 0  # a new classification head is drawn from this seed (`_seeded`)


@dataclass(frozen=True)
class DataOptions:
    """How the data file becomes batches."""

    task: str = "cls"
    batch: int = 8  # rows per batch
    max_len: int = 128  # tokens per row


def _loss_fn(task: str):
    def loss(model: Any, batch: dict[str, Any]) -> Any:
        if task == "cls":
            return model(**batch).loss
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
        return model(**batch, labels=labels).loss

    return loss


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def attends_ahead(model: Any, vocab_size: int, device: str) -> bool:
    """True when the logits at some position change with a later token (the model is not causal)."""
    import torch

    ids = (torch.arange(6, device=device) * 7 + 3) % max(vocab_size - 1, 1) + 1  # (6,) ids ≥ 1
    other = ids.clone()
    other[-1] = ids[-1] % max(vocab_size - 1, 1) + 1 if vocab_size > 2 else ids[-1]
    with torch.no_grad():
        a = model(input_ids=ids[None]).logits[0, :-1].float()  # (5, V)
        b = model(input_ids=other[None]).logits[0, :-1].float()
    return not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-12)


def _load(model_dir: Path, model_type: str, task: str, n_labels: int) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"cannot load its tokenizer ({_first_line(e)})", path=model_dir) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    auto = AutoModelForSequenceClassification if task == "cls" else AutoModelForCausalLM
    kwargs = {"num_labels": n_labels} if task == "cls" else {}
    try:
        model = _seeded(lambda: auto.from_pretrained(model_dir, **kwargs))
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            kind = "sequence-classification" if task == "cls" else "causal-LM"
            raise UnsupportedError(
                f"{model_dir}: transformers has no {kind} class for model_type {model_type!r} (--task {task})"
            ) from None
        raise FormatError(f"cannot load the model ({_first_line(e)})", path=model_dir) from None
    except (OSError, KeyError, TypeError) as e:
        raise FormatError(f"cannot load the model ({_first_line(e)})", path=model_dir) from None
    if task == "cls":
        model.config.pad_token_id = tok.pad_token_id
    return tok, model


def _seeded(make: Callable[[], Any]) -> Any:
    """make() with torch's global generator at HEAD_SEED, restored afterwards: a classification head
    the checkpoint lacks is initialised the same way on every run, so the gradients, and the GID
    report, do not change from one run to the next (the caller's random state is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        return make()


def _batches(
    tok: Any, rows: list[tuple[str, int]], options: DataOptions, device: str
) -> list[dict[str, Any]]:
    """Tokenised batches of `options.batch` rows (padded, truncated to max_len), on `device`."""
    import torch

    batches = []
    for i in range(0, len(rows), options.batch):
        part = rows[i : i + options.batch]
        texts = [t for t, _ in part]
        enc = tok(texts, padding=True, truncation=True, max_length=options.max_len, return_tensors="pt")
        item = {k: v.to(device) for k, v in enc.items()}
        if options.task == "cls":
            item["labels"] = torch.tensor([label for _, label in part], device=device)
        batches.append(item)
    return batches


def calibrate_model_dir(
    model_dir: str | Path,
    data: str | Path,
    options: DataOptions | None = None,
    *,
    targets: Sequence[str] | None = None,
    config: CalibrationConfig | None = None,
    progress: Progress | None = None,
) -> GidReport:
    """Check `model_dir` and `data`, load the model (offline), build batches, run `calibrate`."""
    import torch

    options = options or DataOptions()
    if options.task not in TASKS:
        raise InvalidArgumentError(f"--task must be cls or clm, got {options.task!r}")
    model_type = check_model_dir(model_dir)
    config = config or CalibrationConfig()
    rows = read_rows(data, options.task)[: config.steps * options.batch]
    n_labels = max(2, max(label for _, label in rows) + 1)
    with hf_quiet():  # "newly initialised head" is expected for --task cls; restored after
        tok, model = _load(Path(model_dir), model_type, options.task, n_labels)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    vocab = getattr(model.config, "vocab_size", None) or len(tok)
    if options.task == "clm" and attends_ahead(model, int(vocab), device):
        raise InvalidArgumentError(
            f"{model_dir}: --task clm needs a causal language model, but this {model_type} model lets "
            "each position see later tokens (an encoder); use --task cls"
        )
    batches = _batches(tok, rows, options, device)
    if config.model_name is None:
        config = replace(config, model_name=str(model_dir))
    report = calibrate(model, batches, _loss_fn(options.task), targets, config, progress)
    calibration = replace(
        report.calibration, batch=options.batch, max_len=options.max_len, task=options.task, data=str(data)
    )
    return replace(report, calibration=calibration)
