"""Versioned per-task datasets with train/validation/test splits, the test split frozen (pure + store).

Each example lands in a split by a hash of its id, so the same example always lands in
the same split. Once a task has a dataset, its test split is frozen: later versions keep
exactly the earlier test examples (those still present) and put every new example in
train or validation, so evaluations of successive specialists stay comparable. Files are
JSONL in chat format; the manifest carries the lineage (record ids per split), counts,
redaction counts and the hash of the source examples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Literal

from protege.store.artifacts import ArtifactNotFoundError, ArtifactStore, Manifest
from protege.tasks.discovery.tasks import Task, TaskRegistry
from protege.tasks.examples import DAY_MS, Example

log = logging.getLogger(__name__)

DATASET_KIND = "dataset"
REGISTRY_KIND = "tasks"
REGISTRY_NAME = "registry"
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")


class DatasetError(ValueError):
    """A dataset cannot be built; the message says why and what to do."""


# A gate decided on fewer test examples swings on one answer (one wrong label in 3 is 0.667 of
# the teacher): a first dataset's test split takes at least this many, at most a fifth of the task.
MIN_TEST_EXAMPLES = 8


def _bucket(example_id: str) -> float:
    return int(hashlib.sha256(example_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_of(example_id: str, validation: float = 0.1, test: float = 0.1) -> Split:
    bucket = _bucket(example_id)
    if bucket < test:
        return "test"
    return "validation" if bucket < test + validation else "train"


def assign_splits(
    examples: Iterable[Example],
    frozen_test: set[str] | None,
    validation: float = 0.1,
    test: float = 0.1,
    min_test: int = MIN_TEST_EXAMPLES,
) -> dict[Split, list[Example]]:
    """The examples by split; with ``frozen_test``, the test split is exactly those ids.

    Without one (a task's first dataset), the test split holds at least ``min_test`` examples
    (at most a fifth of them): training examples move over in hash order, deterministically.
    """
    splits: dict[Split, list[Example]] = {name: [] for name in SPLITS}
    ordered = sorted(examples, key=lambda e: e.id)
    for example in ordered:
        split = split_of(example.id, validation, test)
        if frozen_test is not None:
            # Frozen: exactly the earlier test examples; a new one that would hash to test trains.
            split = "test" if example.id in frozen_test else ("train" if split == "test" else split)
        splits[split].append(example)
    shortfall = min(min_test, len(ordered) // 5) - len(splits["test"])
    if frozen_test is None and shortfall > 0:
        moved = {e.id for e in sorted(splits["train"], key=lambda e: _bucket(e.id))[:shortfall]}
        splits["test"] = sorted(
            splits["test"] + [e for e in splits["train"] if e.id in moved], key=lambda e: e.id
        )
        splits["train"] = [e for e in splits["train"] if e.id not in moved]
    return splits


def _line(example: Example) -> str:
    row = {
        "id": example.id,
        "messages": example.chat(),
        "tools": example.tools,
        "response_format": example.response_format,
        "name_words": example.name_words or None,
    }
    return json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False, sort_keys=True)


def load_registry(store: ArtifactStore) -> TaskRegistry | None:
    try:
        latest = store.latest(REGISTRY_KIND, REGISTRY_NAME)
    except ArtifactNotFoundError:
        return None
    text = store.read_file(REGISTRY_KIND, REGISTRY_NAME, latest.version, "registry.json")
    if json.loads(text).get("version") != TaskRegistry.model_fields["version"].default:
        # A registry of an earlier format: tasks are found again (with new ids) on the next discovery.
        log.warning("task registry %s has an earlier format; ignored until rediscovery", latest.version)
        return None
    return TaskRegistry.model_validate_json(text)


def save_registry(store: ArtifactStore, registry: TaskRegistry) -> Manifest:
    return store.put_artifact(
        REGISTRY_KIND,
        REGISTRY_NAME,
        {"registry.json": registry.model_dump_json(indent=1).encode()},
        {"tasks": len(registry.tasks), "examples": registry.examples},
    )


SQL_DATABASE = "database.sqlite"


def _sqlite_bytes(path: Path) -> bytes:
    """The file's bytes if it is a SQLite database with at least one table; a DatasetError otherwise."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    except sqlite3.Error as error:
        raise DatasetError(f"--sql-database {path}: not a readable SQLite database ({error})") from None
    if not tables:
        raise DatasetError(f"--sql-database {path}: the database has no tables for queries to run on")
    return path.read_bytes()


def examples_in_window(
    examples: Iterable[Example], *, now_ms: int, max_age_days: float, newest: int | None = None
) -> list[Example]:
    """The examples logged in the last ``max_age_days`` (an example of unknown age stays), at most
    the ``newest`` of them; oldest first (pure: a Specialist's data.retentionDays and maxExamples)."""
    cutoff = now_ms - max_age_days * DAY_MS
    kept = sorted(
        (e for e in examples if e.logged_at_ms is None or e.logged_at_ms >= cutoff),
        key=lambda e: (e.logged_at_ms or 0, e.id),
    )
    return kept[-newest:] if newest is not None else kept


def build_dataset(
    store: ArtifactStore,
    task: Task,
    examples: Iterable[Example],
    *,
    min_examples: int = 20,
    validation: float = 0.1,
    test: float = 0.1,
    sql_database: Path | None = None,
) -> Manifest:
    """Store a new dataset version for ``task`` (or return the existing one if nothing changed).

    ``sql_database``: the SQLite file the task's queries run against; stored with the
    dataset as ``SQL_DATABASE`` so evaluation scores SQL by execution on it. Without one,
    the previous version's database is carried forward.
    """
    members = {e.id: e for e in examples if e.id in set(task.example_ids)}
    if len(members) < min_examples:
        raise DatasetError(
            f"task {task.id} ({task.name}) has {len(members)} curated examples; a dataset needs at least "
            f"{min_examples}. Let more traffic through the gateway, then run `protege curate` and "
            "`protege tasks discover` again"
        )
    try:
        previous: Manifest | None = store.latest(DATASET_KIND, task.id)
    except ArtifactNotFoundError:
        previous = None
    frozen = set(previous.metadata["splits"]["test"]) if previous else None
    splits = assign_splits(members.values(), frozen, validation, test)
    if not splits["test"] or not splits["train"]:
        raise DatasetError(
            f"task {task.id} has {len(members)} examples but no {'test' if not splits['test'] else 'train'} "
            "examples after splitting; it needs more examples"
        )
    files = {
        f"{name}.jsonl": "".join(_line(e) + "\n" for e in rows).encode() for name, rows in splits.items()
    }
    if sql_database is not None:
        files[SQL_DATABASE] = _sqlite_bytes(sql_database)
    elif previous is not None and any(entry.path == SQL_DATABASE for entry in previous.files):
        files[SQL_DATABASE] = store.read_file(DATASET_KIND, task.id, previous.version, SQL_DATABASE)
    redactions: Counter[str] = Counter()
    for example in members.values():
        redactions.update(example.redactions)
    metadata = {
        "task": {"id": task.id, "name": task.name, "output_kind": task.output_kind.value},
        "counts": {name: len(rows) for name, rows in splits.items()},
        "splits": {name: [e.id for e in rows] for name, rows in splits.items()},
        "redactions": dict(redactions),
        "source_hash": hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest(),
        "test_frozen_from": previous.version if previous else None,
        "format": "jsonl; a chat per line: {id, messages (the last is the answer), tools?, response_format?, "
        "name_words? (words of the name behind each person placeholder)}",
    }
    return store.put_artifact(DATASET_KIND, task.id, files, metadata)
