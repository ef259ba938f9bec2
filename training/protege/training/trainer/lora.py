"""Supervised LoRA fine-tuning with PEFT and transformers' Trainer (distilling the teacher's answers).

Why not TRL's SFTTrainer: it is not a dependency here, and what a specialist needs —
answer-only loss through the base model's own chat template, tool calls rendered the way
the serving parser reads them, length bucketing or packing, logits only where an answer
token is predicted, early stopping on validation loss, checkpoint and resume — is a data
collator, a loss function and a few arguments on the plain Trainer.

bf16 on GPUs that support it, fp32 elsewhere (CPU runs are then bit-for-bit repeatable);
QLoRA (4-bit) only on CUDA with bitsandbytes, refused clearly otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.api.specialist import TrainingMethod, TrainingSpec
from protege.training.trainer.data import (
    CPU_TOKENS_PER_PASS,
    IGNORE,
    Tokenized,
    examples_per_pass,
    keep_answer_logits,
    pack_batch,
    pad_batch,
    tokenize_rows,
)

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
    """One packed row per batch (``packing``), or right-padded rows with an attention mask."""

    def __init__(self, pad_id: int, packing: bool) -> None:
        self.pad_id = pad_id
        self.packing = packing

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        items = [Tokenized(f["input_ids"], f["labels"]) for f in features]
        batch = keep_answer_logits(pack_batch(items) if self.packing else pad_batch(items, self.pad_id))
        return {key: torch.tensor(value) for key, value in batch.items()}


def answer_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy of the kept logits against their targets (see ``keep_answer_logits``).

    Summed and divided by the step's answer tokens across workers when the Trainer counts
    them (its count skips the leading -100), a plain mean otherwise (evaluation).
    """
    from torch.nn import functional

    logits = outputs.logits.float()
    targets = labels[..., 1:].to(logits.device)
    total = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else targets.ne(IGNORE).sum()
    return total / count


def micro_batch(spec: TrainingSpec, train: Sequence[Tokenized], cuda: bool) -> int:
    """Examples per forward pass: ``training.microBatchSize``; unset, the whole step on a GPU
    and about ``CPU_TOKENS_PER_PASS`` tokens a pass on CPU, where memory, not speed, grows with them."""
    if spec.micro_batch_size is not None:
        return min(spec.micro_batch_size, spec.batch_size)
    if cuda:
        return spec.batch_size
    mean_tokens = sum(len(item.input_ids) for item in train) / len(train)
    return examples_per_pass(spec.batch_size, mean_tokens, CPU_TOKENS_PER_PASS)


def check_method(spec: TrainingSpec) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before loading anything."""
    if spec.method is not TrainingMethod.QLORA:
        return
    import torch

    if not torch.cuda.is_available():
        raise TrainingError(
            "training.method 'qlora' needs a CUDA GPU; none is visible here. Use method 'lora'."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            "training.method 'qlora' needs bitsandbytes: pip install bitsandbytes (CUDA images only)"
        )


def complete_checkpoint(checkpoint: Path) -> bool:
    """The trainer writes its state last: a run killed while saving leaves it missing or cut short."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint a run can resume from (one killed mid-save is passed over)."""
    checkpoints = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return next((c for c in reversed(checkpoints) if complete_checkpoint(c)), None)


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
    if spec.packing and bf16 and importlib.util.find_spec("flash_attn") is not None:
        model_options["attn_implementation"] = "flash_attention_2"  # packed rows as variable-length batches
    base = AutoModelForCausalLM.from_pretrained(model_dir, **model_options)
    base.config.use_cache = False  # a cache in training turns off packed-sequence attention
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

    per_pass = micro_batch(spec, train, cuda)
    passes = spec.batch_size // per_pass
    log.info("training: %d examples per forward pass, %d passes a step", per_pass, passes)
    steps_per_epoch = max(1, len(train) // spec.batch_size)
    every = eval_every or max(1, steps_per_epoch // 2)
    has_validation = bool(validation)
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=per_pass,
        gradient_accumulation_steps=passes,  # the same update as one pass of the whole step
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
        # packed rows have no padding; without packing, length bucketing keeps it small
        train_sampling_strategy="random" if spec.packing else "group_by_length",
        bf16=bf16,
        use_cpu=not cuda,
        # a packed row is all real tokens; padded rows are counted through their attention mask
        include_num_input_tokens_seen="all" if spec.packing else "non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation needs the loss, not every logit kept in memory
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Rows(train),
        eval_dataset=_Rows(validation) if has_validation else None,
        data_collator=_Collator(pad_id, spec.packing),
        compute_loss_func=answer_loss,
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
