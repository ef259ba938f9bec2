"""What a pool replica loads before any call: the versions its routing table routes to."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from protege.serving.pool.preload import to_preload, wanted
from protege.serving.router.table import Candidate, RolloutStage, RoutingTable, SpecialistRoute, TableFile


def _route(
    name: str, active: str | None, candidate: str | None = None, failed: tuple[str, ...] = ()
) -> SpecialistRoute:
    return SpecialistRoute(
        specialist=name,
        tenant="acme",
        task_id=f"task-{name}",
        active=active,
        candidate=Candidate(version=candidate, stage=RolloutStage.SHADOW) if candidate else None,
        failed=list(failed),
    )


TABLE = RoutingTable(
    routes=[
        _route("billing", "v1", candidate="v2"),
        _route("intent", None, candidate="v7"),  # first version, in shadow
        _route("sql", "v3", candidate="v4", failed=("v4",)),  # its candidate could not load
    ]
)


def test_active_versions_come_before_candidates_and_failed_ones_never() -> None:
    assert wanted(TABLE) == ["billing@v1", "sql@v3", "billing@v2", "intent@v7"]
    assert wanted(RoutingTable()) == []


def test_a_preload_fills_free_slots_only() -> None:
    assert to_preload(TABLE, [], 8, ()) == ["billing@v1", "sql@v3", "billing@v2", "intent@v7"]
    # what calls loaded stays: two slots of four are held, so two more
    assert to_preload(TABLE, ["other@v9", "billing@v1"], 4, ()) == ["sql@v3", "billing@v2"]
    assert to_preload(TABLE, ["a@1", "b@1"], 2, ()) == []  # full: nothing is evicted for a preload
    # one that failed on this replica is not tried again (until the table changes)
    assert to_preload(TABLE, [], 8, {"sql@v3"}) == ["billing@v1", "billing@v2", "intent@v7"]


def test_the_table_file_is_read_again_only_when_it_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.json"
    routes = TableFile(path)
    assert routes.changed() is None  # no file yet
    path.write_text(TABLE.model_dump_json())
    assert routes.changed() == TABLE
    assert routes.changed() is None  # the same text
    path.write_text("{not json")
    with caplog.at_level(logging.ERROR):
        assert routes.changed() is None  # the caller keeps the table it has
    assert "is invalid, keeping the previous one" in caplog.text
    path.write_text(RoutingTable().model_dump_json())
    assert routes.changed() == RoutingTable()
    assert TableFile(None).changed() is None
