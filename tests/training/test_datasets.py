"""Per-task datasets: splits by id, a frozen test split, lineage in the manifest."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protege.api.ids import uuid7_at
from protege.api.specialist import DataPolicy
from protege.evaluation.metrics import run_query
from protege.flywheel.data import StoreData
from protege.pii.redactor import PLACEHOLDER
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import (
    DATASET_KIND,
    MIN_TEST_EXAMPLES,
    DatasetError,
    assign_splits,
    build_dataset,
    examples_in_window,
    load_registry,
    save_registry,
    split_of,
)
from protege.tasks.discovery import MiniLM, discover
from protege.tasks.discovery.tasks import Exemplar, RouterProfile, Task, TaskRegistry, fingerprint
from protege.tasks.examples import DAY_MS, Example, example_from_record
from protege.training.curation import ExampleStore
from protege.training.job import read_rows, task_database
from protege.workload import build_database, generate


def test_split_is_a_pure_function_of_the_id() -> None:
    ids = [f"id-{i}" for i in range(5000)]
    splits = [split_of(i) for i in ids]
    assert splits == [split_of(i) for i in ids]
    assert 0.08 < splits.count("test") / 5000 < 0.12 and 0.08 < splits.count("validation") / 5000 < 0.12


@pytest.mark.slow
def test_dataset_versions_keep_the_test_split_frozen(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    calls = generate(900, seed=31)
    examples = [example_from_record(call.to_record()) for call in calls]
    first_half, second_half = examples[:450], examples
    registry = discover(first_half, MiniLM())
    save_registry(store, registry)
    assert load_registry(store) == registry
    task = next(t for t in registry.tasks if t.output_kind.value == "json")

    first = build_dataset(store, task, first_half)
    counts = first.metadata["counts"]
    assert sum(counts.values()) == task.size and min(counts.values()) > 0
    rows = [
        json.loads(line)
        for line in store.read_file("dataset", task.id, first.version, "train.jsonl").splitlines()
    ]
    assert len(rows) == counts["train"]
    assert rows[0]["messages"][-1]["role"] == "assistant" and rows[0]["response_format"] == {
        "type": "json_object"
    }
    assert first.metadata["task"]["output_kind"] == "json" and first.metadata["test_frozen_from"] is None
    assert build_dataset(store, task, first_half).version == first.version  # nothing new, same version

    grown = discover(second_half, MiniLM(), previous=registry)
    grown_task = grown.get(task.id)
    second = build_dataset(store, grown_task, second_half)
    assert second.version != first.version and second.metadata["test_frozen_from"] == first.version
    assert second.metadata["splits"]["test"] == first.metadata["splits"]["test"]
    new_ids = set(grown_task.example_ids) - set(task.example_ids)
    assert new_ids and not new_ids & set(second.metadata["splits"]["test"])
    assert sum(second.metadata["counts"].values()) == grown_task.size


def small_task(family: str, count: int) -> tuple[Task, list[Example]]:
    calls = generate(count, seed=2, families=(family,))
    # Record ids are time-based; fixed ids make the hashed splits the same on every run.
    examples = [
        example_from_record(call.to_record()).model_copy(update={"id": f"example-{i:03d}"})
        for i, call in enumerate(calls)
    ]
    task = Task(
        id="task-small",
        name="label-small",
        size=len(examples),
        output_kind=examples[0].output_kind,
        example_ids=[e.id for e in examples],
        exemplars=[Exemplar(id=examples[0].id, user_text=examples[0].user_text)],
        router=RouterProfile(
            fingerprint=fingerprint(examples[0], {}), centroids=[[1.0]], threshold=0.5, embedding_model="x"
        ),
        first_seen=datetime.now(UTC),
    )
    return task, examples


def test_a_training_uses_the_examples_logged_within_its_window() -> None:
    now_ms = 1_790_000_000_000
    _, examples = small_task("intent", 5)
    aged = {  # days old → example; the UUIDv7 ids carry the time
        days: e.model_copy(update={"id": str(uuid7_at(now_ms - days * DAY_MS))})
        for days, e in zip((40, 31, 29, 1), examples, strict=False)
    }
    unknown_age = examples[4]  # an id of another kind: kept, counted oldest
    everything = [*aged.values(), unknown_age]
    kept = examples_in_window(everything, now_ms=now_ms, max_age_days=30)
    assert kept == [unknown_age, aged[29], aged[1]]
    assert examples_in_window(everything, now_ms=now_ms, max_age_days=30, newest=2) == [aged[29], aged[1]]
    assert examples_in_window(everything, now_ms=now_ms, max_age_days=365) == [unknown_age, *aged.values()]


async def test_a_specialists_dataset_holds_its_newest_examples(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    task, examples = small_task("intent", 60)
    for example in examples:
        ExampleStore(store).put(ExampleStore.key(example), example)
    save_registry(store, TaskRegistry(examples=len(examples), tasks=[task]))
    dataset = await StoreData(store).build_dataset(task.id, DataPolicy(max_examples=40))
    manifest = store.manifest(DATASET_KIND, task.id, dataset.version)
    used = {i for ids in manifest.metadata["splits"].values() for i in ids}
    stored = sorted(e.id for e in ExampleStore(store).load())  # ids of unknown age: newest by id
    assert dataset.examples == 40 and len(stored) > 40 and used == set(stored[-40:])


def test_too_small_a_task_is_refused_with_the_way_out(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    task, examples = small_task("intent", 30)
    with pytest.raises(DatasetError, match=r"needs at least 50.*protege curate"):
        build_dataset(store, task, examples, min_examples=50)
    splits = assign_splits(examples, frozen_test={examples[0].id})
    assert [e.id for e in splits["test"]] == [examples[0].id]


def test_a_first_dataset_keeps_enough_examples_to_test_on(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    task, examples = small_task("intent", 49)  # the demo's first intent dataset: 4 of its ids hash to test
    by_hash = assign_splits(examples, frozen_test=None, min_test=0)
    first = build_dataset(store, task, examples)
    test_ids = first.metadata["splits"]["test"]
    assert len(test_ids) == MIN_TEST_EXAMPLES > len(by_hash["test"])
    assert {e.id for e in by_hash["test"]} <= set(test_ids)  # the hashed ones stay, train examples join
    assert first.metadata["counts"]["train"] == len(by_hash["train"]) - (len(test_ids) - len(by_hash["test"]))
    assert assign_splits(examples, frozen_test=None) == assign_splits(list(reversed(examples)), None)
    tiny = assign_splits(examples[:20], frozen_test=None)
    assert len(tiny["test"]) <= 4 and tiny["train"]  # at most a fifth of a small task
    later = assign_splits(examples, frozen_test=set(test_ids))
    assert [e.id for e in later["test"]] == sorted(test_ids)  # later versions: the same test split


def test_a_sql_task_carries_its_database_for_execution_scoring(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    task, examples = small_task("sql", 40)
    build_database(tmp_path / "shop.sqlite").close()
    manifest = build_dataset(store, task, examples, sql_database=tmp_path / "shop.sqlite")
    database = task_database(store, task.id, manifest.version)
    assert database is not None
    [row] = json.loads(store.read_file("dataset", task.id, manifest.version, "test.jsonl").splitlines()[0])[
        "messages"
    ][-1:]
    assert run_query(database, row["content"])  # the teacher's query runs on the stored database
    without = build_dataset(ArtifactStore((tmp_path / "other").as_uri()), task, examples)
    assert task_database(ArtifactStore((tmp_path / "other").as_uri()), task.id, without.version) is None

    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(DatasetError, match="not a readable SQLite database"):
        build_dataset(store, task, examples, sql_database=tmp_path / "notes.txt")
    sqlite3.connect(tmp_path / "empty.sqlite").close()
    with pytest.raises(DatasetError, match="no tables"):
        build_dataset(store, task, examples, sql_database=tmp_path / "empty.sqlite")


def test_a_dataset_stores_placeholders_and_a_model_reads_fake_values(tmp_path: Path) -> None:
    """Extraction copies the customer's name into its answer: stored, both are one placeholder;
    read for training or evaluation, both are one realistic name (serving sees real names)."""
    store = ArtifactStore((tmp_path / "store").as_uri())
    task, examples = small_task("extract", 30)
    manifest = build_dataset(store, task, examples)
    stored = store.read_file("dataset", task.id, manifest.version, "train.jsonl").decode()
    assert stored.count('\\"name\\": \\"<PERSON_1>\\"') == manifest.metadata["counts"]["train"]
    rows = read_rows(store, task.id, manifest.version, "train")
    assert len(rows) == manifest.metadata["counts"]["train"]
    for row in rows:
        assert not PLACEHOLDER.search(json.dumps(row))
        name = json.loads(row["messages"][-1]["content"])["name"]
        assert name in row["messages"][-2]["content"]  # the name in the answer is the prompt's
        assert len(name.split()) == 1  # as the workload's names: the shape a model learns to copy
    assert len({json.loads(row["messages"][-1]["content"])["name"] for row in rows}) > len(rows) // 2


def test_discovering_one_tenant_keeps_the_other_tenants_tasks() -> None:
    """`protege tasks discover --tenant T` rewrote the registry with T's tasks alone."""
    task, _ = small_task("intent", 20)

    def of(tenant: str, task_id: str) -> Task:
        fingerprint_ = task.router.fingerprint.model_copy(update={"tenant": tenant})
        return task.model_copy(
            update={"id": task_id, "router": task.router.model_copy(update={"fingerprint": fingerprint_})}
        )

    previous = TaskRegistry(
        tasks=[of("acme", "task-old-acme"), of("globex", "task-globex")],
        prompt_segments={"acme": {"a": 10}, "globex": {"g": 12}},
    )
    fresh = TaskRegistry(tasks=[of("acme", "task-new-acme")], prompt_segments={"acme": {"b": 11}})
    merged = fresh.with_other_tenants(previous, "acme")
    assert sorted(t.id for t in merged.tasks) == ["task-globex", "task-new-acme"]
    assert merged.prompt_segments == {"acme": {"b": 11}, "globex": {"g": 12}}
    assert fresh.with_other_tenants(None, "acme") == fresh
