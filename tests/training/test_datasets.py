"""Per-task datasets: splits by id, a frozen test split, lineage in the manifest."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from protege.store.artifacts import ArtifactStore
from protege.training.datasets import (
    DatasetError,
    assign_splits,
    build_dataset,
    load_registry,
    save_registry,
    split_of,
)
from protege.training.discovery import MiniLM, discover
from protege.training.discovery.tasks import Exemplar, RouterProfile, Task, fingerprint
from protege.training.examples import example_from_record
from protege.workload import generate


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


def test_too_small_a_task_is_refused_with_the_way_out(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    examples = [example_from_record(call.to_record()) for call in generate(30, seed=2, families=("intent",))]
    task = Task(
        id="task-small",
        name="label-small",
        size=len(examples),
        output_kind=examples[0].output_kind,
        example_ids=[e.id for e in examples],
        exemplars=[Exemplar(id=examples[0].id, user_text=examples[0].user_text)],
        router=RouterProfile(
            fingerprint=fingerprint(examples[0]), centroids=[[1.0]], threshold=0.5, embedding_model="x"
        ),
        first_seen=datetime.now(UTC),
    )
    with pytest.raises(DatasetError, match=r"needs at least 50.*protege curate"):
        build_dataset(store, task, examples, min_examples=50)
    splits = assign_splits(examples, frozen_test={examples[0].id})
    assert [e.id for e in splits["test"]] == [examples[0].id]
