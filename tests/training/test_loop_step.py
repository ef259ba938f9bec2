"""A specialist for one step of an agent's tool loop, from traffic the project did not shape for itself.

A two-step support agent (tests/traffic/shapes.py: a tool call, then a final answer that
reads the tool's result) through discovery: the final-answer step of the order lookup is
its own task; its specialist is trained with real PEFT on the conversation up to that step
(tool call and tool result in the prompt, the answer alone learnt), evaluated with its
tokens' log-probabilities, and the router sends it only calls at that step.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from traffic.shapes import tool_loop

from protege.api.calls import ChatRequest
from protege.api.specialist import EvaluationMetric, TrainingSpec
from protege.serving.router.classify import CallEmbeddings, TaskClassifier
from protege.tasks.discovery import MiniLM, discover
from protege.tasks.examples import example_from_record
from protege.training.evaluation import TransformersGenerator, evaluate
from protege.training.trainer import train_lora
from protege.training.trainer.data import IGNORE, tokenize_row

pytestmark = pytest.mark.slow

STEP = "answer-after-lookup_order"


async def test_a_loop_step_specialist_learns_its_step_and_is_routed_only_that_step(
    smollm2: Path, tmp_path: Path
) -> None:
    calls = tool_loop(240, 11)
    records = [call.to_record() for call in calls]
    truth = {record.id: call.task for record, call in zip(records, calls, strict=True)}
    examples = {record.id: example_from_record(record) for record in records}
    embedder = MiniLM()
    registry = discover(list(examples.values()), embedder)
    [task] = [
        t for t in registry.tasks if Counter(truth[i] for i in t.example_ids).most_common(1)[0][0] == STEP
    ]
    assert {truth[i] for i in task.example_ids} == {STEP}  # the step alone: no tool-call step, no stock check

    rows = [
        {"id": i, "messages": examples[i].chat(), "tools": examples[i].tools}
        for i in sorted(task.example_ids)
    ]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    item = tokenize_row(rows[0], tokenizer, 1024)
    assert item is not None
    prompt = tokenizer.decode(
        [t for t, label in zip(item.input_ids, item.labels, strict=True) if label == IGNORE]
    )
    learnt = tokenizer.decode([label for label in item.labels if label != IGNORE])
    answer, result = rows[0]["messages"][-1]["content"], rows[0]["messages"][-2]["content"]
    assert result in prompt and "lookup_order" in prompt and "<tool_response>" in prompt  # the loop so far
    assert learnt.startswith(answer) and result not in learnt  # only the answer (and its end of turn)

    # two short steps: what is under test is that such rows train and evaluate, not how well (CPU time)
    spec = TrainingSpec(rank=8, epochs=1, batch_size=2, learning_rate=2e-3, max_seq_len=1024)
    trained = train_lora(smollm2, rows[:4], rows[4:5], spec, tmp_path, max_steps=2)
    assert trained.steps == 2 and trained.dropped_too_long == 0 and trained.tokens_seen > 0
    generator = TransformersGenerator(smollm2, trained.adapter_dir, max_new_tokens=12)
    scored = evaluate(rows[-2:], generator, EvaluationMetric.SIMILARITY)
    assert scored.examples == 2 and all(scored.token_logprobs) and scored.generated_tokens > 0
    assert all(value <= 0 for answer_logprobs in scored.token_logprobs for value in answer_logprobs)

    embeddings = CallEmbeddings(embedder)
    classifier = TaskClassifier(registry.tasks, registry.prompt_segments, embeddings)
    routed: Counter[tuple[str, bool]] = Counter()
    for call in tool_loop(120, 12):  # held out, raw: the router sees what the agent sends
        match = await classifier.match(call.to_record().tenant, ChatRequest.model_validate(call.request))
        routed[call.task, match is not None and match.task_id == task.id] += 1
    embeddings.close()
    assert routed[STEP, True] >= 0.9 * (routed[STEP, True] + routed[STEP, False])
    assert sum(count for (label, hit), count in routed.items() if label != STEP and hit) == 0
