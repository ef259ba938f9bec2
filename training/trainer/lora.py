"""Supervised LoRA fine-tuning with PEFT and transformers' Trainer (distilling the teacher's answers).

Why not TRL's SFTTrainer: it is not a dependency here, and what a specialist needs —
answer-only loss through the base model's own chat template, tool calls rendered the way
the serving parser reads them, length bucketing, early stopping on validation loss,
checkpoint and resume — is a data collator and a few arguments on the plain Trainer.

bf16 on GPUs that support it, fp32 elsewhere (CPU runs are then bit-for-bit repeatable);
QLoRA (4-bit) only on CUDA with bitsandbytes, refused clearly otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.api.specialist import TrainingMethod, TrainingSpec
from protege.training.trainer.data import Tokenized, pad_batch, tokenize_rows

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """Training cannot start; the message says what to change."""


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float
    best_eval_loss: float | None
    tokens_seen: int
    seconds: float
    dropped_too_long: int
    resumed_from: str | None


class _Rows:
    """A torch-style dataset of tokenized rows (the Trainer only needs len and indexing)."""

    def __init__(self, items: list[Tokenized]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        item = self.items[index]
        return {"input_ids": item.input_ids, "labels": item.labels}


class _Collator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        batch = pad_batch([Tokenized(f["input_ids"], f["labels"]) for f in features], self.pad_id)
        return {key: torch.tensor(value) for key, value in batch.items()}


def check_method(spec: TrainingSpec) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before loading anything."""
    if spec.method is not TrainingMethod.QLORA:
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise TrainingError(
            "training.method 'qlora' needs a CUDA GPU; none is visible here. Use method 'lora'."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            "training.method 'qlora' needs bitsandbytes: pip install bitsandbytes (CUDA images only)"
        )


def last_checkpoint(directory: Path) -> Path | None:
    checkpoints = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return checkpoints[-1] if checkpoints else None


def train_lora(
    model_dir: Path,
    train_rows: Sequence[dict[str, Any]],
    validation_rows: Sequence[dict[str, Any]],
    spec: TrainingSpec,
    output_dir: Path,
    *,
    max_steps: int | None = None,
    eval_every: int | None = None,
    early_stopping_patience: int = 3,
    gradient_checkpointing: bool = False,
) -> TrainResult:
    """Train a LoRA adapter on ``train_rows``; resumes from the last checkpoint in ``output_dir``."""
    check_method(spec)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train, dropped = tokenize_rows(train_rows, tokenizer, spec.max_seq_len)
    validation, _ = tokenize_rows(validation_rows, tokenizer, spec.max_seq_len)
    if not train:
        raise TrainingError(
            f"no training example fits training.maxSeqLen {spec.max_seq_len} ({dropped} too long); raise it"
        )
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model_options: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if spec.method is TrainingMethod.QLORA:
        from transformers import BitsAndBytesConfig

        model_options["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    base = AutoModelForCausalLM.from_pretrained(model_dir, **model_options)
    targets: str | list[str] = "all-linear" if spec.target_modules == ["all-linear"] else spec.target_modules
    model = get_peft_model(
        base,
        LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha or 2 * spec.rank,
            lora_dropout=spec.dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        ),
    )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()

    steps_per_epoch = max(1, len(train) // spec.batch_size)
    every = eval_every or max(1, steps_per_epoch // 2)
    has_validation = bool(validation)
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        num_train_epochs=spec.epochs,
        max_steps=max_steps if max_steps is not None else -1,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps_per_epoch // 10),
        logging_steps=max(1, every // 2),
        eval_strategy="steps" if has_validation else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        load_best_model_at_end=has_validation,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=spec.seed,
        data_seed=spec.seed,
        train_sampling_strategy="group_by_length",  # length bucketing: little padding
        bf16=bf16,
        use_cpu=not cuda,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Rows(train),
        eval_dataset=_Rows(validation) if has_validation else None,
        data_collator=_Collator(pad_id),
        callbacks=[EarlyStoppingCallback(early_stopping_patience)] if has_validation else [],
    )
    resume = last_checkpoint(output_dir / "checkpoints")
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    adapter_dir = output_dir / "adapter"
    if trainer.is_world_process_zero():  # data parallel: one writer
        model.save_pretrained(str(adapter_dir))  # the PEFT wrapper: adapter weights and config only
        tokenizer.save_pretrained(adapter_dir)
    return TrainResult(
        adapter_dir=adapter_dir,
        steps=trainer.state.global_step,
        train_loss=float(result.training_loss),
        best_eval_loss=trainer.state.best_metric,
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        seconds=time.perf_counter() - started,
        dropped_too_long=dropped,
        resumed_from=resume.name if resume else None,
    )
