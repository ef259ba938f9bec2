"""Task discovery on the shipped multi-task workload, with the real all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from protege.api.ids import uuid7
from protege.api.specialist import OutputKind
from protege.tasks.discovery import MiniLM, TaskRegistry, discover
from protege.tasks.discovery.discover import DiscoverySettings, split_indices
from protege.tasks.examples import Example, example_from_record, output_kind
from protege.workload import generate
from protege.workload.agent import CITIES, NAMES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedder() -> MiniLM:
    return MiniLM()


def examples_of(
    count: int, seed: int, styles: tuple[str, ...] = ("plain", "terse", "polite")
) -> tuple[list[Example], dict[str, str]]:
    calls = generate(count, seed=seed, styles=styles)
    examples = [example_from_record(call.to_record()) for call in calls]
    return examples, {e.id: call.task for e, call in zip(examples, calls, strict=True)}


def labels(registry: TaskRegistry, truth: dict[str, str]) -> tuple[list[str], list[str]]:
    assigned = {example_id: task.id for task in registry.tasks for example_id in task.example_ids}
    ids = sorted(truth)
    return [truth[i] for i in ids], [assigned.get(i, "unassigned") for i in ids]


def test_discovery_recovers_the_workload_tasks(embedder: MiniLM) -> None:
    examples, truth = examples_of(600, seed=11)
    registry = discover(examples, embedder)
    true_labels, found = labels(registry, truth)
    assert adjusted_rand_score(true_labels, found) >= 0.9
    assert len(registry.tasks) == 5 and not registry.unassigned
    kinds = sorted(task.output_kind.value for task in registry.tasks)
    assert kinds == ["json", "label", "sql", "sql", "tool_call"]
    # The two SQL tasks share one system prompt: writing a query is told from fixing one
    # by the shape of the user turn (it carries the broken query).
    sql = sorted(
        (t for t in registry.tasks if t.output_kind is OutputKind.SQL),
        key=lambda t: t.router.fingerprint.input_shape,
    )
    assert sql[0].router.fingerprint.system_hash == sql[1].router.fingerprint.system_hash
    assert [t.router.fingerprint.input_shape for t in sql] == ["code", "text"]
    assert {truth[i] for i in sql[0].example_ids} == {"sqlfix"}
    tool = next(t for t in registry.tasks if t.output_kind is OutputKind.TOOL_CALL)
    assert tool.name == "search-flights"
    proper = {word.lower() for word in (*NAMES, *CITIES)}  # people and places never name a task
    parts = {part for task in registry.tasks for part in task.name.split("-")}
    assert not any(part in word for part in parts for word in proper), parts
    assert all(
        task.exemplars and task.router.threshold < 1 and len(task.router.centroids[0]) == 384
        for task in registry.tasks
    )


def test_task_ids_are_stable_across_runs_and_grow_with_new_data(embedder: MiniLM) -> None:
    first_examples, truth = examples_of(400, seed=5)
    first = discover(first_examples, embedder)
    more, more_truth = examples_of(300, seed=6, styles=("polite",))  # new traffic, a new phrasing style
    second = discover([*reversed(first_examples), *more], embedder, previous=first)
    assert {t.id for t in second.tasks} == {t.id for t in first.tasks}
    by_id = {t.id: t for t in first.tasks}
    for task in second.tasks:
        assert task.size > by_id[task.id].size and task.first_seen == by_id[task.id].first_seen
        assert set(by_id[task.id].example_ids) <= set(task.example_ids)
    true_labels, found = labels(second, truth | more_truth)
    assert adjusted_rand_score(true_labels, found) >= 0.9
    # Same input again (any order): the same tasks, and the registry round-trips through JSON.
    again = discover(list(reversed([*first_examples, *more])), embedder, previous=second)
    assert [(t.id, t.size) for t in again.tasks] == [(t.id, t.size) for t in second.tasks]
    assert TaskRegistry.model_validate_json(again.model_dump_json()) == again


def test_one_generic_prompt_serving_two_tasks_is_split_by_meaning(embedder: MiniLM) -> None:
    """Same system prompt, no tools, prose answers: only the meaning tells the two tasks apart."""
    rng = random.Random(3)
    sentences = [
        "the train leaves at noon",
        "I would like a coffee with milk",
        "where is the museum",
        "we close on Sundays",
    ]
    dishes = ["a chocolate cake", "banana bread", "a lasagne", "roast potatoes", "a cheesecake"]
    translate = [
        "Translate into {lang}: {s}",
        "How do you say '{s}' in {lang}?",
        "{lang} translation please: {s}",
    ]
    bake = [
        "How long should I bake {d}?",
        "What temperature is right for {d}?",
        "Any tips for baking {d} at home?",
    ]
    examples, truth = [], {}
    for index in range(200):
        is_translation = index % 2 == 0
        text = (
            rng.choice(translate).format(
                lang=rng.choice(["French", "German", "Spanish"]), s=rng.choice(sentences)
            )
            if is_translation
            else rng.choice(bake).format(d=rng.choice(dishes))
        )
        example = Example(
            id=str(uuid7()),
            tenant="acme",
            app="assistant",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": text},
            ],
            answer={
                "role": "assistant",
                "content": "Here is what I suggest, with a short explanation of why.",
            },
            output_kind=OutputKind.PROSE,
        )
        examples.append(example)
        truth[example.id] = "translate" if is_translation else "bake"
    registry = discover(examples, embedder)
    true_labels, found = labels(registry, truth)
    assert len(registry.tasks) == 2 and adjusted_rand_score(true_labels, found) >= 0.9
    assert registry.tasks[0].router.fingerprint == registry.tasks[1].router.fingerprint


def test_too_small_groups_stay_unassigned(embedder: MiniLM) -> None:
    examples, _ = examples_of(100, seed=2)
    rare = [e for e in examples if e.output_kind is OutputKind.TOOL_CALL][:4]
    rest = [e for e in examples if e.output_kind is not OutputKind.TOOL_CALL]
    registry = discover([*rest, *rare], embedder)
    assert sorted(registry.unassigned) == sorted(e.id for e in rare)
    with pytest.raises(KeyError, match="known tasks"):
        registry.get("nope")


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ({"content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, "tool_call"),
        ({"content": '{"a": 1}'}, "json"),
        ({"content": '```json\n{"a": 1}\n```'}, "json"),
        ({"content": "SELECT 1;"}, "sql"),
        ({"content": "with t as (select 1) select * from t"}, "sql"),
        ({"content": "refund_request"}, "label"),
        ({"content": "The order ships tomorrow. Anything else?"}, "prose"),
    ],
)
def test_output_kinds(answer: dict, kind: str) -> None:  # type: ignore[type-arg]
    assert output_kind({"role": "assistant", **answer}).value == kind


def test_examples_are_redacted_everywhere() -> None:
    call = generate(50, seed=1, families=("tool",))[0]
    call.request["messages"][-1]["content"] += " Contact me at jane.doe@example.com"
    arguments = json.loads(call.answer["tool_calls"][0]["function"]["arguments"])
    arguments["contact"] = "jane.doe@example.com"
    call.answer["tool_calls"][0]["function"]["arguments"] = json.dumps(arguments)
    example = example_from_record(call.to_record())
    assert "jane.doe" not in example.model_dump_json()
    assert "<EMAIL_1>" in example.user_text
    assert json.loads(example.answer["tool_calls"][0]["function"]["arguments"])["contact"] == "<EMAIL_1>"
    assert example.redactions == {"EMAIL": 2}


def test_task_names_skip_proper_nouns() -> None:
    """A name PII redaction let through ("David", alone) must not name a task, whole or in part."""
    from protege.api.calls import CallRecord
    from protege.tasks.discovery.discover import propose_name
    from protege.tasks.discovery.tasks import fingerprint

    def example(text: str) -> Example:
        record = CallRecord.model_validate(
            {
                "tenant": "acme",
                "request": {"model": "m", "messages": [{"role": "user", "content": text}]},
                "response": {"choices": [{"message": {"content": "ok"}}]},
                "latency": {"total_ms": 1},
            }
        )
        return example_from_record(record)

    members = [example(f"David here - deliver parcel {i}") for i in range(5)]
    others = [example(f"hello there number {i}") for i in range(5)]
    name = propose_name(members, members + others, fingerprint(members[0], {}))
    assert name == "label-deliver-parcel"


def _clustered(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Unit vectors around one random direction per size (far apart), shuffled together."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=64) * 4 + rng.normal(size=(n, 64)) for n in sizes]
    vectors = np.concatenate(rows)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors[rng.permutation(len(vectors))].astype(np.float32)


def test_a_group_that_stays_whole_embeds_only_its_sample_and_splits_decide_as_without_it() -> None:
    settings, unbounded = DiscoverySettings(), DiscoverySettings(sample_size=10**9)
    for sizes, parts in (([300], 1), ([180, 120], 2)):
        vectors = _clustered(sizes)
        asked: set[int] = set()

        def embed(indices: np.ndarray, vectors: np.ndarray = vectors, asked: set[int] = asked) -> np.ndarray:
            asked.update(indices.tolist())
            return vectors[indices]

        group = np.arange(len(vectors))
        found = split_indices(group, embed, settings)
        assert len(found) == parts
        assert len(asked) == (settings.sample_size if parts == 1 else len(vectors))
        whole = split_indices(group, lambda indices, v=vectors: v[indices], unbounded)
        assert sorted(map(tuple, found)) == sorted(map(tuple, whole))
