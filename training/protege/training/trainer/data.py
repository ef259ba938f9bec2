"""Dataset rows → token ids and labels for supervised fine-tuning, loss on the answer only.

A row is a chat (``messages``, the last one the teacher's answer), with the ``tools`` the
call offered. It is rendered with the base model's own chat template; the labels mask
everything up to the answer with -100, so the model learns the answer (and the end of
its turn), never to imitate the prompt.

Chat templates that know nothing of tools (SmolLM2's, for one) would silently drop tool
calls; for those the row is written as the pool serves it (:mod:`protege.models.chat`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protege.models.chat import hermes_messages, template_knows_tools

IGNORE = -100
# Tokens a forward pass holds on CPU when training.microBatchSize is unset: activation memory grows
# with them, speed does not (bench/train_throughput.py: 2.5x less peak memory, same tokens/s).
CPU_TOKENS_PER_PASS = 512


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def prompt_messages(
    row: dict[str, Any], tokenizer: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The row's messages and tools as the template will see them."""
    messages, tools = row["messages"], row.get("tools")
    if template_knows_tools(tokenizer.chat_template):
        return messages, tools
    return hermes_messages(messages, tools), None


def tokenize_row(row: dict[str, Any], tokenizer: Any, max_len: int) -> Tokenized | None:
    """Ids and labels of one row (answer tokens only); None if it does not fit ``max_len``."""
    messages, tools = prompt_messages(row, tokenizer)
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError(f"row {row.get('id')}: the last message must be the assistant's answer to learn")
    extra = {"tools": tools} if tools else {}
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, **extra)
    full = tokenizer.apply_chat_template(messages, tokenize=False, **extra)
    if not full.startswith(prompt):
        raise ValueError(
            f"row {row.get('id')}: the chat template renders the prompt differently with the answer; "
            "cannot tell the answer's tokens apart"
        )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(answer_ids) > max_len:
        return None
    return Tokenized(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids)


def tokenize_rows(
    rows: Iterable[dict[str, Any]], tokenizer: Any, max_len: int
) -> tuple[list[Tokenized], int]:
    """All rows that fit, and how many were too long (dropped, never cut: a cut answer teaches wrong)."""
    kept, dropped = [], 0
    for row in rows:
        item = tokenize_row(row, tokenizer, max_len)
        if item is None:
            dropped += 1
        else:
            kept.append(item)
    return kept, dropped


def pack_batch(items: list[Tokenized]) -> dict[str, list[list[int]]]:
    """The examples of one step concatenated into a single row, without padding.

    Position ids restart at 0 for each example; transformers reads that as packed
    sequences and keeps attention inside each example (block-diagonal causal masks, or
    flash-attention's variable-length kernels), so the loss equals the padded batch's.
    The first token of each example is a prompt token (label -100), so no example learns
    to predict the next one.
    """
    return {
        "input_ids": [[token for item in items for token in item.input_ids]],
        "position_ids": [[position for item in items for position in range(len(item))]],
        "labels": [[label for item in items for label in item.labels]],
    }


def pad_batch(items: list[Tokenized], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-padded input_ids, attention_mask and labels (padding never counts in the loss)."""
    width = max(len(item) for item in items)
    return {
        "input_ids": [item.input_ids + [pad_id] * (width - len(item)) for item in items],
        "attention_mask": [[1] * len(item) + [0] * (width - len(item)) for item in items],
        "labels": [item.labels + [IGNORE] * (width - len(item)) for item in items],
    }


def keep_answer_logits(batch: dict[str, Any]) -> dict[str, Any]:
    """Logits only at the positions that predict an answer token, in some row of the batch.

    The vocabulary projection (and the softmax over it) of every prompt token would be
    computed only to be ignored; ``logits_to_keep`` tells the model which positions to
    project. ``labels`` become those positions' targets, after one -100 that stands for
    the shift, so the Trainer's count of answer tokens stays exact (see ``answer_loss``).
    """
    labels = batch["labels"]
    width = len(labels[0])
    keep = [t for t in range(width - 1) if any(row[t + 1] != IGNORE for row in labels)]
    return {
        **batch,
        "logits_to_keep": keep,
        "labels": [[IGNORE] + [row[t + 1] for t in keep] for row in labels],
    }


def examples_per_pass(batch_size: int, mean_tokens: float, token_budget: int) -> int:
    """The most examples of a step, dividing it, that make a pass of at most ``token_budget``
    tokens at ``mean_tokens`` an example (at least one)."""
    return max(
        (d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * mean_tokens <= token_budget),
        default=1,
    )
