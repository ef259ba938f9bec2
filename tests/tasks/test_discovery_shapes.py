"""Task identity on agent traffic the project did not shape for itself (tests/traffic/shapes.py).

For each shape: discovery on the redacted examples finds every true task in a handful of
tasks at most (a classifier whose labels mean unrelated things, triage for one, may be
found as a task per group of labels), none mixing two true tasks; and the router, on raw
held-out requests, sends each call to a task of its own true task, through the same
features and the real all-MiniLM-L6-v2 embeddings.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from traffic.shapes import SHAPES, ShapedCall

from protege.api.calls import ChatRequest
from protege.api.specialist import OutputKind
from protege.serving.router.classify import CallEmbeddings, TaskClassifier
from protege.tasks.discovery import MiniLM, TaskRegistry, discover
from protege.tasks.examples import example_from_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> MiniLM:
    return MiniLM()


def discovered(calls: list[ShapedCall], embedder: MiniLM) -> tuple[TaskRegistry, dict[str, str]]:
    """The registry of the calls, and each example id's true task."""
    records = [call.to_record() for call in calls]
    truth = {record.id: call.task for record, call in zip(records, calls, strict=True)}
    return discover([example_from_record(r) for r in records], embedder), truth


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_each_true_task_is_found_and_its_calls_routed_to_it(shape: str, embedder: MiniLM) -> None:
    calls = SHAPES[shape](400, 1)
    registry, truth = discovered(calls, embedder)
    true_tasks = set(truth.values())

    found_for: dict[str, set[str]] = defaultdict(set)
    label_of: dict[str, str] = {}
    for task in registry.tasks:
        labels = Counter(truth[i] for i in task.example_ids)
        label_of[task.id] = labels.most_common(1)[0][0]
        assert labels.most_common(1)[0][1] >= 0.9 * task.size, f"{task.name} mixes tasks: {labels}"
        for label in labels:
            found_for[label].add(task.id)
    assert set(found_for) == true_tasks, f"{shape}: true tasks not found: {true_tasks - set(found_for)}"
    assert all(len(ids) <= 3 for ids in found_for.values()), {k: len(v) for k, v in found_for.items()}
    assert not registry.unassigned
    assert len({t.name for t in registry.tasks}) == len(registry.tasks)  # names are unique

    classifier = TaskClassifier(registry.tasks, registry.prompt_segments, CallEmbeddings(embedder))
    kinds = {task.id: task.output_kind for task in registry.tasks}
    held_out = SHAPES[shape](120, 99)
    routed = 0
    for call in held_out:
        match = await classifier.match("acme", ChatRequest.model_validate(call.request))
        if match is None:
            continue
        routed += 1
        assert label_of[match.task_id] == call.task, f"{call.task} routed to {label_of[match.task_id]}"
        if call.request["messages"][-1]["role"] == "tool":  # a final step never meets a tool-call task
            assert kinds[match.task_id] is not OutputKind.TOOL_CALL
    assert routed >= 0.9 * len(held_out), f"{shape}: {routed}/{len(held_out)} held-out calls routed"
    classifier.embeddings.close()  # type: ignore[union-attr]


def test_one_tool_set_shared_by_several_tasks_gives_each_its_own_name(embedder: MiniLM) -> None:
    registry, _ = discovered(SHAPES["tool_loop"](400, 1), embedder)
    names = {task.name.split("-", 1)[1] if "-after-" in task.name else task.name for task in registry.tasks}
    assert names == {"check-stock", "lookup-order", "after-check-stock", "after-lookup-order"}
    # found again with more data: the same ids keep the same names
    again = discover(
        [example_from_record(c.to_record()) for c in SHAPES["tool_loop"](500, 1)], embedder, registry
    )
    assert {t.id: t.name for t in again.tasks} == {t.id: t.name for t in registry.tasks}
