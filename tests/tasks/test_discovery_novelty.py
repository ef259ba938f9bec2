"""Each task's novelty bar: calls like its own stay below it (about 5%), shifted calls go above.

Discovery runs on the shipped workload with a constant embedder: its five families differ in
structure, so no split by meaning is needed, and every task is alone in its structure (the
case that had no word profile before novelty bars).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from protege.api.calls import last_user_text
from protege.tasks.discovery import TaskRegistry, discover
from protege.tasks.discovery.discover import MAX_PROFILE_WORDS
from protege.tasks.discovery.features import (
    NOVELTY_QUANTILE,
    PII_WORD,
    leave_one_out_novelty,
    novelty,
    novelty_bar,
    words,
)
from protege.tasks.discovery.tasks import Task
from protege.tasks.examples import example_from_record
from protege.workload import WorkloadCall, generate

TRAINING_CALLS = 400  # 80 per family
EXPECTED = 1 - NOVELTY_QUANTILE


class Flat:
    """Every text the same vector: tasks are found by structure alone."""

    name = "flat"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.asarray([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


@pytest.fixture(scope="module")
def found() -> tuple[TaskRegistry, dict[str, Task], dict[str, list[str]]]:
    """The registry, the task of each workload family, and each task's training user turns."""
    calls = generate(TRAINING_CALLS, seed=7, styles=("plain", "terse"))
    examples = [example_from_record(call.to_record()) for call in calls]
    family = {example.id: call.task for example, call in zip(examples, calls, strict=True)}
    registry = discover(examples, Flat())
    text = {example.id: example.user_text for example in examples}
    task_of, turns = {}, {}
    for task in registry.tasks:
        [name] = {family[i] for i in task.example_ids}
        task_of[name], turns[task.id] = task, [text[i] for i in task.example_ids]
    return registry, task_of, turns


def novel_calls(task: Task, calls: Sequence[WorkloadCall]) -> int:
    """How many of the calls the task's profile finds novel (as the router reads a request)."""
    found = [task.router.novelty(last_user_text(call.request["messages"])) for call in calls]
    return sum(bool(n and n.novel) for n in found)


def test_leave_one_out_counts_a_word_only_its_call_has_as_unseen() -> None:
    calls = [["refund", "order", "0"], ["refund", "order", "late"], ["refund", "order", "0"], []]
    vocabulary = {"refund", "order", "0", "late"}
    assert leave_one_out_novelty(calls, vocabulary) == [0.0, 1 / 3, 0.0, None]
    assert novelty_bar(calls, vocabulary, quantile=0.5, min_calls=3) == 0.0
    assert novelty_bar(calls, vocabulary, min_calls=3) == 1 / 3
    assert novelty_bar(calls, vocabulary) is None  # three calls with words: too few for a bar
    assert novelty(["refund", "parcel"], vocabulary) == 0.5 and novelty([], vocabulary) is None
    assert novelty_bar([[], []], vocabulary, min_calls=0) is None


def test_a_placeholder_is_a_word_no_vocabulary_holds() -> None:
    """Discovery reads redacted turns, the router raw ones: where a name was redacted, the
    router reads the name, a word the task never saw, so the placeholder counts as unseen."""
    assert words("Thanks, <PERSON_1> - 3 kettles to <ADDRESS_2>") == [
        "thanks",
        PII_WORD,
        "0",
        "kettles",
        "to",
        PII_WORD,
    ]
    assert leave_one_out_novelty([words("hi <PERSON_1> here")] * 3, {"hi", "here"}) == [1 / 3] * 3


def test_every_task_gets_a_capped_vocabulary_and_a_bar_its_own_calls_respect(
    found: tuple[TaskRegistry, dict[str, Task], dict[str, list[str]]],
) -> None:
    registry, task_of, turns = found
    assert sorted(task_of) == ["extract", "intent", "sql", "sqlfix", "tool"]
    for task in registry.tasks:
        profile = task.router
        assert 0 < len(profile.words) <= MAX_PROFILE_WORDS and profile.novelty_bar is not None
        # by construction: at most 5% of its own calls (left out one at a time) are above the bar
        own = leave_one_out_novelty([words(t) for t in turns[task.id]], profile.words)
        above = sum(share is not None and share > profile.novelty_bar for share in own)
        assert above <= EXPECTED * len(own), (task.name, above, len(own))
    assert TaskRegistry.model_validate_json(registry.model_dump_json()) == registry


def test_new_calls_like_the_training_calls_are_rarely_novel_and_shifted_calls_are(
    found: tuple[TaskRegistry, dict[str, Task], dict[str, list[str]]],
) -> None:
    _, task_of, _ = found
    same = generate(2000, seed=99, styles=("plain", "terse"))  # held out: another seed
    novel = sum(novel_calls(task, [c for c in same if c.task == name]) for name, task in task_of.items())
    # About 5% at most: the bar is the 95% quantile of 400 training calls (binomial error of a
    # share of 5% over 400 calls) and the held-out share is over 2,000 calls: 3 standard errors.
    tolerance = 3 * math.sqrt(EXPECTED * (1 - EXPECTED) * (1 / TRAINING_CALLS + 1 / len(same)))
    assert novel / len(same) <= EXPECTED + tolerance, (novel, len(same))

    # The agent's users turn polite ("Hello! ... Thank you so much."): words no task has seen.
    polite = generate(1000, seed=99, styles=("polite",))
    for name, task in task_of.items():
        mine = [c for c in polite if c.task == name]
        # 200 calls each: a 95% interval is at most ±7 points wide, so 90% is far above 5% + 7
        assert novel_calls(task, mine) >= 0.9 * len(mine), name

    # Another task's calls are unlike the task's own.
    others = sum(novel_calls(task, [c for c in same if c.task != name]) for name, task in task_of.items())
    assert others >= 0.9 * 4 * len(same), others
