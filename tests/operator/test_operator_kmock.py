"""The real kopf operator against kmock's Kubernetes emulator: a pool's children and status."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.testing import register_kmock_resources

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fast_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf binds timer intervals when the operator module is first imported, once per process."""
    import sys

    from protege.services.process import free_port

    monkeypatch.setenv("PROTEGE_OPERATOR_METRICS_PORT", str(free_port()))
    for name in ("STATUS_INTERVAL", "SPECIALIST_INTERVAL"):
        monkeypatch.setenv(f"PROTEGE_OPERATOR_{name}", "0.5")
        module = sys.modules.get("protege.operator.main")
        assert module is None or getattr(module, name) == 0.5, "imported before with other intervals"


async def until(check: Callable[[], Any], seconds: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


def stored(kmock: Any, resource: str, name: str) -> dict[str, Any] | None:
    try:
        history = kmock.objects[resource, "agents", name]
    except KeyError:
        return None
    return None if history.deleted else dict(history.raw)


async def test_a_pool_gets_its_children_and_becomes_ready(
    kmock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kopf.testing import KopfRunner

    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    pool = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    pool["metadata"] |= {"namespace": "agents", "uid": "u-1", "generation": 1, "resourceVersion": "1"}
    broken = {**pool, "metadata": {**pool["metadata"], "name": "broken", "uid": "u-2"}}
    broken["spec"] = {**pool["spec"], "engine": {"maxLoraRank": 33}}

    with KopfRunner(["run", "-A", "--standalone", "-m", "protege.operator.main"]) as runner:
        kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
        kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "broken"] = broken
        service = await until(lambda: stored(kmock, "ray.io/v1/rayservices", "smollm2-pool-serve"))
        assert service["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        await until(lambda: stored(kmock, "apps/v1/deployments", "smollm2-pool-gateway"))  # applied in turn
        await until(lambda: stored(kmock, "v1/configmaps", "smollm2-pool-routes"))

        def pool_status(name: str) -> dict[str, Any]:
            return dict(stored(kmock, "protege.dev/v1alpha1/specialistpools", name) or {}).get("status") or {}

        await until(lambda: pool_status("smollm2-pool").get("phase") == "Provisioning")
        kmock.objects["ray.io/v1/rayservices", "agents", "smollm2-pool-serve"].patch(
            {"status": {"serviceStatus": "Running"}}
        )
        ready = await until(
            lambda: pool_status("smollm2-pool").get("phase") == "Ready" and pool_status("smollm2-pool")
        )
        [condition] = ready["conditions"]
        assert (condition["type"], condition["status"], condition["reason"]) == (
            "Ready",
            "True",
            "ServeRunning",
        )
        assert ready["observedGeneration"] == 1

        failed = await until(lambda: pool_status("broken").get("phase") == "Failed" and pool_status("broken"))
        assert "spec.engine.maxLoraRank" in failed["conditions"][0]["message"]
        assert stored(kmock, "ray.io/v1/rayservices", "broken-serve") is None  # nothing created
    assert runner.exception is None


def task_size(store: Any) -> int:
    from protege.training.datasets import load_registry

    registry = load_registry(store)
    assert registry is not None
    return registry.tasks[0].size


def children(kmock: Any, resource: str, prefix: str) -> list[str]:
    return sorted(
        key[2]
        for key in list(kmock.objects)
        if key[0] == resource and key[2].startswith(prefix) and stored(kmock, resource, key[2])
    )


def specialist_body(base: dict[str, Any], name: str, uid: str, **spec: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(base))
    body["metadata"] = {
        "name": name,
        "namespace": "agents",
        "uid": uid,
        "generation": 1,
        "resourceVersion": "1",
    }
    body["spec"] |= spec
    return dict(body)


def routes_of(kmock: Any) -> dict[str, Any]:
    data = (stored(kmock, "v1/configmaps", "smollm2-pool-routes") or {}).get("data") or {}
    table = json.loads(data.get("routes.json") or '{"routes": []}')
    return {route["specialist"]: route for route in table["routes"]}


@pytest.fixture
def flywheel_cluster(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nats_server: Any
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """kmock with a store holding a discovered task, the operator pointed at both; (store, pool, base)."""
    from protege.store.artifacts import ArtifactStore
    from protege.testing import seed_task

    register_kmock_resources(kmock)
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 80, task_id="t-extract")
    for name, value in {
        "API_SERVER": str(kmock.url),
        "ARTIFACT_STORE": store.url,
        "NATS_URL": nats_server.url,
    }.items():
        monkeypatch.setenv(f"PROTEGE_OPERATOR_{name}", value)
    pool = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    pool["metadata"] |= {"namespace": "agents", "uid": "u-1", "generation": 1, "resourceVersion": "1"}
    base = yaml.safe_load((ROOT / "examples" / "specialist.yaml").read_text())
    base["spec"]["task"] = {"id": "t-extract", "tenant": "acme"}
    base["spec"]["data"]["minExamples"] = 40
    base["spec"]["evaluation"] = {"minRelativeToTeacher": 0.8}
    return store, pool, base


async def scrape(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def delete(kmock: Any, path: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.delete(f"{kmock.url}{path}") as response:
        assert response.status < 300


async def test_a_specialist_trains_shadows_fails_and_cleans_up(
    kmock: Any, flywheel_cluster: tuple[Any, dict[str, Any], dict[str, Any]]
) -> None:
    from kopf.testing import KopfRunner

    from protege.services.process import free_port
    from protege.testing import seed_task
    from protege.training.job import RESULTS_AREA

    store, pool, base = flywheel_cluster

    def specialist(name: str, uid: str, **spec: Any) -> dict[str, Any]:
        return specialist_body(base, name, uid, **spec)

    def status_of(name: str) -> dict[str, Any]:
        return dict(stored(kmock, "protege.dev/v1alpha1/specialists", name) or {}).get("status") or {}

    def routes() -> dict[str, Any]:
        return routes_of(kmock)

    resource = "protege.dev/v1alpha1/specialists"
    with KopfRunner(["run", "-A", "--standalone", "-m", "protege.operator.main"]) as runner:
        kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
        kmock.objects[resource, "agents", "sql-writer"] = specialist("sql-writer", "s-1")
        kmock.objects[resource, "agents", "bad-rank"] = specialist("bad-rank", "s-2", training={"rank": 0})
        [job_name] = await until(lambda: children(kmock, "ray.io/v1/rayjobs", "sql-writer-train-"))
        job = stored(kmock, "ray.io/v1/rayjobs", job_name)
        assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == "s-1"
        training = await until(
            lambda: status_of("sql-writer").get("phase") == "Training" and status_of("sql-writer")
        )
        assert training["versions"][-1]["jobName"] == job_name and training["examples"] == task_size(store)
        assert "sql-writer" in routes() and routes()["sql-writer"]["task_id"] == "t-extract"  # registered
        failed = await until(lambda: status_of("bad-rank").get("phase") == "Failed" and status_of("bad-rank"))
        assert "spec.training.rank" in failed["conditions"][0]["message"]
    assert runner.exception is None

    # Restarted mid-training (with more data meanwhile): the job is found, not started again.
    seed_task(store, "extract", 120, task_id="t-extract")
    kmock.objects[resource, "agents", "other"] = specialist("other", "s-3")
    os.environ["PROTEGE_OPERATOR_METRICS_PORT"] = str(free_port())  # the first one's server lives on
    with KopfRunner(["run", "-A", "--standalone", "-m", "protege.operator.main"]) as runner:
        await asyncio.sleep(2)
        assert children(kmock, "ray.io/v1/rayjobs", "sql-writer-train-") == [job_name]

        # The job stores its result and KubeRay reports success: the candidate goes to shadow.
        scores = {"metric": "json_fields", "specialist": 0.9, "teacher": 1.0, "relativeToTeacher": 0.9}
        result = {
            "adapter_version": "va1",
            "adapter_uri": "file:///a",
            "dataset_version": "d",
            "scores": scores,
        }
        store.put_object(
            RESULTS_AREA, f"sql-writer.{job_name.rsplit('-', 1)[-1]}", json.dumps(result).encode()
        )
        store.put_artifact("adapter", "sql-writer", {"adapter_config.json": b"{}"})
        kmock.objects["ray.io/v1/rayjobs", "agents", job_name].patch({"status": {"jobStatus": "SUCCEEDED"}})
        shadow = await until(
            lambda: status_of("sql-writer").get("phase") == "Shadow" and status_of("sql-writer")
        )
        assert shadow["candidateVersion"] == "va1" and shadow["versions"][-1]["state"] == "Shadow"
        assert routes()["sql-writer"]["candidate"] | {"since": None} == {
            "version": "va1",
            "stage": "shadow",
            "traffic_percent": 0,
            "since": None,
        }

        # A second specialist whose job fails says why.
        [other_job] = await until(lambda: children(kmock, "ray.io/v1/rayjobs", "other-train-"))
        kmock.objects["ray.io/v1/rayjobs", "agents", other_job].patch(
            {"status": {"jobStatus": "FAILED", "message": "Job entrypoint command failed with exit code 2"}}
        )
        broken = await until(lambda: status_of("other").get("phase") == "Failed" and status_of("other"))
        assert "exit code 2" in broken["versions"][-1]["message"]

        # kmock's emulator has no generateName, so it keeps only kopf's first Event: read what was posted.
        # kopf posts events from a background queue, so the last one may land after the status patch.
        def reasons() -> set[str]:
            return {r.data.get("reason") for r in list(kmock) if r.resource == "v1/events" and r.data}

        await until(lambda: {"TrainingStarted", "CandidateShadowing", "TrainingFailed"} <= reasons())
        exposition = await scrape(f"http://127.0.0.1:{os.environ['PROTEGE_OPERATOR_METRICS_PORT']}/metrics")
        for needle in (
            'protege_operator_specialists{phase="Failed"} 1.0',
            'events_total{reason="TrainingFailed"}',
        ):
            assert needle in exposition

        # Delete: the finalizer takes it out of the routes and deletes its adapters first.
        await delete(kmock, "/apis/protege.dev/v1alpha1/namespaces/agents/specialists/sql-writer")
        await until(lambda: stored(kmock, resource, "sql-writer") is None, seconds=60)
        assert "sql-writer" not in routes() and "other" in routes()
        assert store.versions("adapter", "sql-writer") == []
        assert store.list_objects(RESULTS_AREA, "sql-writer.") == []
    assert runner.exception is None
