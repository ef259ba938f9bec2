"""Evaluate a model on a frozen test split: base zero-shot, base few-shot, or with a LoRA adapter.

Answers are generated greedily with the model's chat template (the same rendering the
trainer used, Hermes tool calls included), parsed back into assistant messages, and
scored against the teacher's recorded answers with the task's metric. On GPUs the same
role falls to vLLM's offline engine; here transformers' ``generate`` keeps the test small
and dependency-free.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.api.specialist import EvaluationMetric
from protege.evaluation import scorer
from protege.training.trainer.data import prompt_messages

_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def parse_answer(text: str) -> dict[str, Any]:
    """Generated text as an assistant message; Hermes ``<tool_call>`` blocks become tool_calls."""
    calls = []
    for index, block in enumerate(_TOOL_CALL.findall(text)):
        try:
            data = json.loads(block)
        except ValueError:
            continue
        arguments = data.get("arguments", {})
        calls.append(
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {
                    "name": str(data.get("name", "")),
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    if calls:
        rest = _TOOL_CALL.sub("", text).strip()
        return {"role": "assistant", "content": rest or None, "tool_calls": calls}
    return {"role": "assistant", "content": text.strip()}


def with_few_shot(row: dict[str, Any], shots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row with solved examples from train inserted as earlier turns, after the system prompt."""
    messages = row["messages"][:-1]
    system = [m for m in messages[:1] if m["role"] == "system"]
    demos = [m for shot in shots for m in shot["messages"][len(system) :]]
    return {**row, "messages": [*system, *demos, *messages[len(system) :], row["messages"][-1]]}


@dataclass
class EvalResult:
    score: float
    examples: int
    per_example: list[float] = field(repr=False)
    latency_ms_p50: float
    generated_tokens: int
    token_logprobs: list[list[float]] = field(repr=False)  # per answer, each generated token's

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "examples": self.examples,
            "latency_ms_p50": self.latency_ms_p50,
            "generated_tokens": self.generated_tokens,
        }


@dataclass
class Generations:
    """Answers in order: their texts, their tokens' log-probabilities, per-answer latency (ms)."""

    texts: list[str] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    tokens: int = 0


def _through_first_stop(tokens: list[int], stops: Sequence[int | None]) -> list[int]:
    """The generated tokens up to and including the first stop token (the padding after it dropped)."""
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    return tokens


class TransformersGenerator:
    """Greedy batched generation with a base model and, optionally, a LoRA adapter."""

    def __init__(
        self, model_dir: Path, adapter_dir: Path | None = None, max_new_tokens: int = 128, batch_size: int = 8
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter_dir is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
        self.model = model.eval()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = [self.tokenizer.eos_token_id, end_of_turn]

    def generate(self, rows: Sequence[dict[str, Any]]) -> Generations:
        """Each row's answer, with its tokens' log-probabilities and the batch's time shared."""
        import torch

        out = Generations()
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            prompts = []
            for row in batch:
                messages, tools = prompt_messages(row, self.tokenizer)
                extra = {"tools": tools} if tools else {}
                prompts.append(
                    self.tokenizer.apply_chat_template(
                        messages[:-1], tokenize=False, add_generation_prompt=True, **extra
                    )
                )
            encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            started = time.perf_counter()
            with torch.no_grad():
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=[t for t in self.stop_ids if t is not None],
                    pad_token_id=self.tokenizer.pad_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
                # log-softmax of the logits, as vLLM's logprobs are: the chosen token's, per step
                chosen = self.model.compute_transition_scores(
                    output.sequences, output.scores, normalize_logits=True
                )
            elapsed = (time.perf_counter() - started) * 1000
            new_tokens = output.sequences[:, encoded["input_ids"].shape[1] :]
            for tokens, logprobs in zip(new_tokens.tolist(), chosen.tolist(), strict=True):
                answer = _through_first_stop(tokens, self.stop_ids)
                ids = [t for t in answer if t != self.tokenizer.pad_token_id]
                out.tokens += len(ids)
                out.texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                out.logprobs.append([float(value) for value in logprobs[: len(answer)]])
            out.latencies_ms += [elapsed / len(batch)] * len(batch)
        return out


def evaluate(
    rows: Sequence[dict[str, Any]],
    generator: TransformersGenerator,
    metric: EvaluationMetric,
    *,
    database: sqlite3.Connection | None = None,
    shots: Sequence[dict[str, Any]] = (),
) -> EvalResult:
    """Score the generator's answers to ``rows`` against the rows' own (teacher) answers."""
    prompts = [with_few_shot(row, shots) for row in rows] if shots else list(rows)
    answers = generator.generate(prompts)
    score = scorer(metric, database)
    per_example = [
        score(parse_answer(text), row["messages"][-1]) for text, row in zip(answers.texts, rows, strict=True)
    ]
    return EvalResult(
        score=sum(per_example) / len(per_example) if per_example else 0.0,
        examples=len(per_example),
        per_example=per_example,
        latency_ms_p50=statistics.median(answers.latencies_ms) if answers.latencies_ms else 0.0,
        generated_tokens=answers.tokens,
        token_logprobs=answers.logprobs,
    )
