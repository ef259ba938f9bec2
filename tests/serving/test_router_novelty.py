"""The router records each matched call's novelty against its task; the drift over those records.

The registry is discovery's own, from the shipped workload (a constant embedder: the
families differ in structure), stored and read back the way a gateway reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from protege.api.calls import CallRecord, ChatRequest, RouteReason, UpstreamKind
from protege.config import Settings
from protege.flywheel.rollout import EXPECTED_NOVEL_SHARE, input_drift
from protege.serving.router.router import Router
from protege.serving.router.table import RoutingTable, SpecialistRoute
from protege.tasks.datasets import REGISTRY_KIND, REGISTRY_NAME, save_registry
from protege.tasks.discovery import TaskRegistry, discover
from protege.tasks.examples import example_from_record
from protege.workload import WorkloadCall, generate

T0 = datetime(2026, 12, 1, tzinfo=UTC)


class Flat:
    name = "flat"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.asarray([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


@pytest.fixture(scope="module")
def registry() -> TaskRegistry:
    calls = generate(400, seed=7, styles=("plain", "terse"))
    return discover([example_from_record(call.to_record()) for call in calls], Flat())


def intent_task(registry: TaskRegistry) -> str:
    return next(task.id for task in registry.tasks if task.output_kind.value == "label")


def router_for(tmp_path: Path, registry: TaskRegistry | str) -> Router:
    """A gateway's router reading ``registry`` (or a registry's stored JSON) from its store."""
    router = Router(Settings(home=tmp_path, router={"enabled": True, "engine_url": "http://127.0.0.1:9"}))
    if isinstance(registry, TaskRegistry):
        save_registry(router.store, registry)
    else:
        router.store.put_artifact(REGISTRY_KIND, REGISTRY_NAME, {"registry.json": registry.encode()}, {})
    router.refresh()
    return router


async def routed(router: Router, calls: Sequence[WorkloadCall], at: datetime = T0) -> list[CallRecord]:
    """The calls as the gateway logs them once the router planned them (a specialist answering)."""
    records = []
    for call in calls:
        plan = await router.plan("demo", ChatRequest.model_validate(call.request))
        route = plan.decision(UpstreamKind.SPECIALIST)
        records.append(call.to_record().model_copy(update={"route": route, "timestamp": at}))
    return records


async def test_the_router_records_novelty_and_the_drift_rises_when_the_traffic_changes(
    tmp_path: Path, registry: TaskRegistry
) -> None:
    router = router_for(tmp_path, registry)
    task_id = intent_task(registry)
    route = SpecialistRoute(specialist="intent", tenant="demo", task_id=task_id, active="v1")
    router.table = RoutingTable(routes=[route])
    before = [c for c in generate(1000, seed=99, styles=("plain", "terse")) if c.task == "intent"]
    after = [c for c in generate(1000, seed=99, styles=("polite",)) if c.task == "intent"]
    usual, shifted = await routed(router, before), await routed(router, after, T0 + timedelta(hours=1))

    decisions = [r.route for r in usual + shifted]
    assert all(d.task_id == task_id and d.reason is RouteReason.SPECIALIST for d in decisions)
    assert all(d.novelty is not None and d.novel is not None for d in decisions)
    bar = registry.get(task_id).router.novelty_bar
    assert bar is not None and all(d.novel == (d.novelty is not None and d.novelty > bar) for d in decisions)
    # recorded on the call, and read back from its JSON
    assert CallRecord.from_json(shifted[0].to_json()).route.novel is True

    # 200 calls each; with 95% intervals of at most ±7 points the two are far apart
    calm = input_drift(usual, task_id, 0.95)
    assert calm is not None and calm.calls == len(before) and calm.low <= EXPECTED_NOVEL_SHARE
    drifted = input_drift(usual + shifted, task_id, 0.95, since=T0 + timedelta(hours=1))
    assert drifted is not None and drifted.calls == len(after) and drifted.low > 0.9
    assert input_drift(usual + shifted, "another-task", 0.95) is None
    await router.close()


async def test_a_registry_written_before_novelty_bars_still_routes(
    tmp_path: Path, registry: TaskRegistry
) -> None:
    old = json.loads(registry.model_dump_json())
    for task in old["tasks"]:  # as discovery wrote it then: no bar, and no words for a task alone
        del task["router"]["novelty_bar"]
        task["router"]["words"] = {}
    router = router_for(tmp_path, json.dumps(old))
    assert router.tasks and all(task.router.novelty_bar is None for task in router.tasks.values())
    task_id = intent_task(registry)
    router.table = RoutingTable(
        routes=[SpecialistRoute(specialist="intent", tenant="demo", task_id=task_id, active="v1")]
    )
    calls = [c for c in generate(50, seed=99, styles=("polite",)) if c.task == "intent"]
    records = await routed(router, calls)
    assert records and all(r.route.task_id == task_id and r.route.version == "v1" for r in records)
    assert all(r.route.novel is None and r.route.novelty is None for r in records)
    assert input_drift(records, task_id, 0.95) is None  # nothing measured, nothing claimed
    await router.close()
