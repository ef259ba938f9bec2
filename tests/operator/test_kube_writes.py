"""The operator's writes against the API server's rules (kmock's emulator made strict by
:class:`protege.testing.kube_api.KubeApiEmulator`): children by server-side apply with its field
manager, the routing table read-modify-written over the resourceVersion it read, retried on 409."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from protege.api.routes import RoutingTable, SpecialistRoute
from protege.flywheel.lifecycle import RoutesConflictError
from protege.operator.flywheel_io import PoolRoutes
from protege.operator.kube import FIELD_MANAGER, ConflictError, Connection, KubeClient
from protege.operator.platform import Owner
from protege.operator.routing import render_routes
from protege.testing.kube_api import KubeApiEmulator
from protege.testing.plugin import register_kmock_resources

pytestmark = pytest.mark.kmock(cls=KubeApiEmulator)
POOL = Owner("SpecialistPool", "pool", "agents", "u-p")
ROUTES_PATH = "/api/v1/namespaces/agents/configmaps/pool-routes"


def config_map(name: str, **data: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "agents", "labels": {"app": "x"}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def stored(kmock: Any, name: str) -> dict[str, Any] | None:
    try:
        history = kmock.objects["v1/configmaps", "agents", name]
    except KeyError:
        return None
    return None if history.deleted else dict(history.raw)


async def send(kmock: Any, method: str, path: str, body: Any, content_type: str, **params: str) -> int:
    url = str(kmock.url).rstrip("/") + path
    headers = {"Content-Type": content_type}
    async with aiohttp.ClientSession() as session:
        request = session.request(method, url, json=body, headers=headers, params=params)
        async with request as response:
            return response.status


async def test_the_emulator_holds_writes_to_the_api_servers_rules(kmock: Any) -> None:
    register_kmock_resources(kmock)
    path = "/api/v1/namespaces/agents/configmaps/a"
    apply = "application/apply-patch+yaml"
    assert await send(kmock, "PATCH", path, config_map("a", k="1"), apply) == 400  # no fieldManager
    assert stored(kmock, "a") is None
    assert await send(kmock, "PATCH", path, config_map("a", k="1"), apply, fieldManager="m") == 200
    first = stored(kmock, "a") or {}
    assert first["data"] == {"k": "1"}  # created by the apply
    version = first["metadata"]["resourceVersion"]
    merge = "application/merge-patch+json"
    assert await send(kmock, "PATCH", path, {"data": {"k": "2"}}, merge) == 200
    second = stored(kmock, "a") or {}
    assert second["metadata"]["resourceVersion"] != version  # every write a new version
    stale = {"metadata": {"resourceVersion": version}, "data": {"k": "3"}}
    assert await send(kmock, "PATCH", path, stale, merge) == 409
    assert (stored(kmock, "a") or {})["data"] == {"k": "2"}
    fresh = {"metadata": {"resourceVersion": second["metadata"]["resourceVersion"]}, "data": {"k": "3"}}
    assert await send(kmock, "PATCH", path, fresh, merge) == 200
    test = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
    assert await send(kmock, "PATCH", path, test, "application/json-patch+json") == 422


async def test_an_apply_prunes_what_its_manager_stopped_sending_and_keeps_what_others_set(kmock: Any) -> None:
    """Server-side apply's field ownership (managedFields): the applier's dropped fields go, fields
    another writer set or changed stay."""
    register_kmock_resources(kmock)
    path = "/api/v1/namespaces/agents/configmaps/owned"
    apply, merge = "application/apply-patch+yaml", "application/merge-patch+json"
    first = config_map("owned", k="1", dropped="1", shared="1")
    first["metadata"]["annotations"] = {"note": "x"}
    assert await send(kmock, "PATCH", path, first, apply, fieldManager="operator") == 200
    # another writer (an HPA, kubectl) adds a field and changes one the operator applied
    assert await send(kmock, "PATCH", path, {"data": {"extra": "x", "shared": "2"}}, merge) == 200
    assert await send(kmock, "PATCH", path, config_map("owned", k="1"), apply, fieldManager="operator") == 200
    after = stored(kmock, "owned") or {}
    assert after["data"] == {"k": "1", "extra": "x", "shared": "2"}  # dropped and the annotation pruned
    assert "annotations" not in after["metadata"] or not after["metadata"]["annotations"]
    assert after["metadata"]["labels"] == {"app": "x"}
    # two appliers of one value own it together: one dropping it leaves it to the other
    both = config_map("owned", k="1")
    assert await send(kmock, "PATCH", path, both, apply, fieldManager="other") == 200
    assert await send(kmock, "PATCH", path, config_map("owned"), apply, fieldManager="operator") == 200
    assert (stored(kmock, "owned") or {})["data"]["k"] == "1"
    # deleted and applied again: nothing of the old object's ownership carries over
    async with aiohttp.ClientSession() as session, session.delete(str(kmock.url).rstrip("/") + path):
        pass
    assert await send(kmock, "PATCH", path, config_map("owned", k="2"), apply, fieldManager="operator") == 200
    assert (stored(kmock, "owned") or {})["data"] == {"k": "2"}


async def test_children_are_applied_server_side_with_the_operators_field_manager(kmock: Any) -> None:
    register_kmock_resources(kmock)
    kube = KubeClient(Connection(str(kmock.url).rstrip("/"), {}, None))
    try:
        await kube.apply(config_map("child", k="1"))  # missing: created
        kmock.objects["v1/configmaps", "agents", "child"].patch({"data": {"k": "edited", "extra": "x"}})
        await kube.apply(config_map("child", k="1"))  # its field taken back, another's left
        assert (stored(kmock, "child") or {})["data"] == {"k": "1", "extra": "x"}
    finally:
        await kube.close()
    patches = [r for r in list(kmock) if str(r.method.value) == "PATCH"]
    assert len(patches) == 2
    for request in patches:
        assert request.headers["Content-Type"].startswith("application/apply-patch+yaml")
        assert request.params == {"fieldManager": FIELD_MANAGER, "force": "true"}


def route(specialist: str) -> SpecialistRoute:
    return SpecialistRoute(specialist=specialist, tenant="acme", task_id=f"t-{specialist}")


def routes_in(kmock: Any) -> list[str]:
    text = ((stored(kmock, "pool-routes") or {}).get("data") or {}).get("routes.json") or ""
    return [r.specialist for r in RoutingTable.model_validate_json(text).routes] if text else []


class StaleReads(KubeClient):
    """A client whose first read of the routing table waits (``paused``) until ``go`` is set."""

    def __init__(self, kmock: Any) -> None:
        super().__init__(Connection(str(kmock.url).rstrip("/"), {}, None))
        self.paused, self.go, self.reads = asyncio.Event(), asyncio.Event(), 0

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = await super().get(api_version, kind, namespace, name)
        self.reads += 1
        if self.reads == 1:
            self.paused.set()
            await self.go.wait()
        return found


async def test_a_bounded_request_log_serves_every_request_and_keeps_the_newest(kmock: Any) -> None:
    """With ``keep_requests``, a write held while newer requests are served, concurrent writes and
    reads are all served as without it, and the log holds only the newest requests."""
    register_kmock_resources(kmock)
    kmock.keep_requests = 5
    apply = "application/apply-patch+yaml"

    async def write(index: int) -> int:
        path = f"/api/v1/namespaces/agents/configmaps/c{index}"
        return await send(
            kmock, "PATCH", path, config_map(f"c{index}", k=str(index)), apply, fieldManager="m"
        )

    async def read(index: int) -> int:
        return await send(
            kmock, "GET", f"/api/v1/namespaces/agents/configmaps/c{index}", None, "application/json"
        )

    async with kmock._writes:  # a write waits while newer requests come and are served
        held = asyncio.create_task(write(0))
        await asyncio.sleep(0.2)
        assert await asyncio.gather(*(read(0) for _ in range(10))) == [404] * 10
    assert await held == 200
    assert await asyncio.gather(*(write(i) for i in range(1, 40))) == [200] * 39
    assert await asyncio.gather(*(read(i) for i in range(40))) == [200] * 40
    assert [(stored(kmock, f"c{i}") or {}).get("data") for i in range(40)] == [
        {"k": str(i)} for i in range(40)
    ]
    assert len(list(kmock)) <= 5
    assert list(kmock)[-1].url.path == "/api/v1/namespaces/agents/configmaps/c39"


async def test_two_writers_of_one_routing_table_both_keep_their_route(kmock: Any) -> None:
    """Two operators (each with its own lock) update different Specialists' routes; the first one's
    read is stale by the time it writes: its write is refused (409), it reads again, both routes stay."""
    register_kmock_resources(kmock)
    kmock.objects["v1/configmaps", "agents", "pool-routes"] = render_routes(POOL, RoutingTable()) | {
        "metadata": render_routes(POOL, RoutingTable())["metadata"] | {"resourceVersion": "1"}
    }
    slow = StaleReads(kmock)
    other = KubeClient(Connection(str(kmock.url).rstrip("/"), {}, None))
    try:
        first = asyncio.create_task(PoolRoutes(slow, POOL, asyncio.Lock()).update("a", route("a")))
        await slow.paused.wait()  # it has read the table: version 1, empty
        assert await PoolRoutes(other, POOL, asyncio.Lock()).update("b", route("b"))
        assert routes_in(kmock) == ["b"]
        slow.go.set()
        assert await first
        assert slow.reads == 2  # its stale write refused, read again
    finally:
        await slow.close()
        await other.close()
    assert routes_in(kmock) == ["a", "b"]
    writes = [r for r in list(kmock) if str(r.method.value) == "PATCH" and r.url.path == ROUTES_PATH]
    # b wrote over version 1, a's first write too (refused: 409), then a's over the version b left
    sent = [w.data["metadata"]["resourceVersion"] for w in writes]
    assert sent[:2] == ["1", "1"] and len(sent) == 3 and sent[2] != "1"


async def test_a_routing_table_that_keeps_changing_fails_the_update_after_bounded_attempts(
    kmock: Any,
) -> None:
    register_kmock_resources(kmock)
    kmock.objects["v1/configmaps", "agents", "pool-routes"] = render_routes(POOL, RoutingTable()) | {
        "metadata": render_routes(POOL, RoutingTable())["metadata"] | {"resourceVersion": "1"}
    }

    class AlwaysStale(KubeClient):
        async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            found = await super().get(api_version, kind, namespace, name)
            return found and found | {"metadata": found["metadata"] | {"resourceVersion": "0"}}

    kube = AlwaysStale(Connection(str(kmock.url).rstrip("/"), {}, None))
    try:
        with pytest.raises(RoutesConflictError, match=f"{PoolRoutes.attempts} attempts"):
            await PoolRoutes(kube, POOL, asyncio.Lock()).update("a", route("a"))
        with pytest.raises(ConflictError):
            await kube.patch(
                "v1", "ConfigMap", "agents", "pool-routes", {"metadata": {"resourceVersion": "0"}}
            )
    finally:
        await kube.close()
    assert routes_in(kmock) == []
    writes = [r for r in list(kmock) if str(r.method.value) == "PATCH" and r.url.path == ROUTES_PATH]
    assert len(writes) == PoolRoutes.attempts + 1
