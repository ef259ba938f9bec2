"""Adapter versions across faults of the store: a pool replica's loads against a real S3 store
(SeaweedFS) that goes away and comes back, and the gateway's marks of versions the pool refused.

The replica reads the store through a :class:`TcpRelay` taken down and brought back up; its S3
client tries each request once (botocore's own retries off), so the retries seen are the
replica's. The engine is a small vLLM-like server that checks every file it is handed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from protege.api.calls import ChatRequest, RouteReason
from protege.config import Settings
from protege.services.seaweedfs import SeaweedS3
from protege.serving.adapters import AdapterLoadError, AdapterManager, RetryPolicy
from protege.serving.router.classify import TaskMatch
from protege.serving.router.router import Router
from protege.serving.router.table import RoutingTable, SpecialistRoute
from protege.store.artifacts import ArtifactStore, Manifest
from protege.testing.faults import TcpRelay

BASE = "smollm2-135m"


class Engine:
    """vLLM's runtime LoRA API, keeping what each load was handed (path → sha256)."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, dict[str, str]]] = []
        self.resident: set[str] = set()
        self.unload_seconds = 0.0  # how long an unload takes to land
        self.refuse = False  # answer chat calls with the pool's 422 adapter_unavailable
        self.chats = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/load_lora_adapter", self.load)
        self.app.router.add_post("/v1/unload_lora_adapter", self.unload)
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["lora_name"] in self.resident:  # as vLLM answers
            message = f"The lora adapter '{body['lora_name']}' has already been loaded."
            return web.json_response({"error": {"message": message, "type": "InvalidUserInput"}}, status=400)
        self.loads.append((body["lora_name"], _hashes(Path(body["lora_path"]))))
        self.resident.add(body["lora_name"])
        return web.Response(text="ok")

    async def unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(self.unload_seconds)
        self.resident.discard(body["lora_name"])
        return web.Response(text="ok")

    async def chat(self, request: web.Request) -> web.Response:
        self.chats += 1
        if self.refuse:
            error = {"message": "intent@v1: the artifact store failed 4 times", "code": "adapter_unavailable"}
            return web.json_response({"error": error}, status=422)
        message = {"role": "assistant", "content": "order_status"}
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [{"message": message}]})


def _hashes(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
async def engine() -> AsyncIterator[tuple[str, Engine]]:
    served = Engine()
    runner = web.AppRunner(served.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", served
    await runner.cleanup()


@pytest.fixture
def relay(seaweed_s3: SeaweedS3) -> Iterator[TcpRelay]:
    with TcpRelay(seaweed_s3.endpoint_url) as relay:
        yield relay


@pytest.fixture
def stores(
    s3_artifact_store: ArtifactStore, seaweed_s3: SeaweedS3, relay: TcpRelay
) -> tuple[ArtifactStore, ArtifactStore]:
    """The store as a trainer writes it, and as the replica reads it: through the relay, each S3
    request tried once."""
    options: dict[str, Any] = {
        **seaweed_s3.storage_options(),
        "client_kwargs": {"endpoint_url": relay.url},
        "config_kwargs": {"retries": {"total_max_attempts": 1}},
    }
    return s3_artifact_store, ArtifactStore(s3_artifact_store.url, options)


def _adapter(store: ArtifactStore) -> Manifest:
    files = {
        "adapter_config.json": json.dumps({"r": 8, "target_modules": ["q_proj"]}).encode(),
        "adapter_model.safetensors": os.urandom(3 << 20),  # a transfer long enough to cut
    }
    return store.put_artifact("adapter", "intent", files, {"base_model": BASE})


def _whole(manifest: Manifest) -> dict[str, str]:
    return {entry.path: entry.sha256 for entry in manifest.files}


@pytest.mark.slow
async def test_a_store_outage_during_a_load_is_retried_with_backoff_until_it_clears(
    stores: tuple[ArtifactStore, ArtifactStore], relay: TcpRelay, engine: tuple[str, Engine], tmp_path: Path
) -> None:
    writer, reader = stores
    manifest = _adapter(writer)
    relay.down()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff, without its wait; the store is back after two
        waits.append(seconds)
        if len(waits) == 2:
            relay.up()

    adapters = AdapterManager(
        engine[0],
        reader,
        tmp_path / "cache",
        base_model=BASE,
        max_loras=2,
        max_lora_rank=16,
        retry=RetryPolicy(attempts=4, first_delay=0.5),
        sleep=sleep,
    )
    try:
        name = await adapters.ensure("intent", manifest.version)
    finally:
        await adapters.close()
    assert waits == [0.5, 1.0]  # two failed tries, backing off exponentially; the third read it
    assert engine[1].loads == [(name, _whole(manifest))] and not adapters.failed
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [name]  # no temporary left


@pytest.mark.slow
async def test_a_download_cut_midway_leaves_nothing_and_the_version_is_tried_again_later(
    stores: tuple[ArtifactStore, ArtifactStore],
    relay: TcpRelay,
    engine: tuple[str, Engine],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, store = stores
    manifest = _adapter(writer)
    fetched: list[str] = []
    get_file = store.fs.get_file

    def cut_after_the_first_file(rpath: str, lpath: str, **kwargs: Any) -> Any:
        if len(fetched) == 1:
            relay.down()  # the network goes with the config file on disk, the weights not
        fetched.append(rpath)
        return get_file(rpath, lpath, **kwargs)

    monkeypatch.setattr(store.fs, "get_file", cut_after_the_first_file)
    now = [0.0]
    cache = tmp_path / "cache"

    async def no_wait(seconds: float) -> None:
        pass

    adapters = AdapterManager(
        engine[0],
        store,
        cache,
        base_model=BASE,
        max_loras=2,
        max_lora_rank=16,
        retry=RetryPolicy(attempts=2, first_delay=0.5, mark_seconds=10),
        clock=lambda: now[0],
        sleep=no_wait,
    )
    try:
        with pytest.raises(AdapterLoadError, match="the artifact store failed 2 times in a row"):
            await adapters.ensure("intent", manifest.version)
        assert fetched[0].endswith("adapter_config.json") and len(fetched) >= 2  # it was cut midway
        assert list(cache.iterdir()) == []  # no half-written adapter, no temporary directory
        assert engine[1].loads == []

        relay.up()  # the store is back, but the version's failure mark still holds
        connections = relay.connections
        with pytest.raises(AdapterLoadError, match=r"tries it again in 10 s"):
            await adapters.ensure("intent", manifest.version)
        assert relay.connections == connections  # refused at once, nothing asked of the store

        now[0] = 10.0  # the mark expired: the version is tried again, and loads
        name = await adapters.ensure("intent", manifest.version)
    finally:
        await adapters.close()
    assert engine[1].loads == [(name, _whole(manifest))] and not adapters.failed
    assert [p.name for p in cache.iterdir()] == [name]


def test_failure_marks_last_longer_for_each_failure_in_a_row_up_to_a_cap() -> None:
    policy = RetryPolicy(first_delay=0.5, max_delay=3, mark_seconds=10, max_mark_seconds=60)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 3]
    assert [policy.mark(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 60]


class OneTask:
    async def match(self, tenant: str, request: ChatRequest) -> TaskMatch:
        return TaskMatch("t1", None)


async def test_a_version_the_pool_refused_is_asked_for_again_once_its_mark_expires(
    engine: tuple[str, Engine], tmp_path: Path
) -> None:
    router = Router(
        Settings(
            home=tmp_path,
            router={"enabled": True, "engine_url": engine[0], "failed_retry_seconds": 30},
            pool_token="t",
        )
    )
    router.classifier = OneTask()  # type: ignore[assignment]
    router.table = RoutingTable(
        routes=[SpecialistRoute(specialist="intent", tenant="acme", task_id="t1", active="v1")]
    )
    now = [100.0]
    router.clock = lambda: now[0]
    request = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    body = request.model_dump(exclude_none=True)
    try:
        engine[1].refuse = True  # a replica could not load it (its store away)
        plan = await router.plan("acme", request)
        assert plan.route is not None and plan.choice.version == "v1"
        answer = await router.ask(body, plan.route, "v1", plan.admission)
        assert answer.error is not None and "adapter_unavailable" in answer.error

        engine[1].refuse = False  # the pool can serve it again; the gateway does not ask yet
        now[0] += 29
        plan = await router.plan("acme", request)
        assert plan.choice.version is None and plan.choice.reason is RouteReason.NO_ACTIVE_SPECIALIST
        assert engine[1].chats == 1

        now[0] += 1  # router.failed_retry_seconds later: asked again, and answered
        plan = await router.plan("acme", request)
        assert plan.route is not None and plan.choice.version == "v1"
        answer = await router.ask(body, plan.route, "v1", plan.admission)
        assert answer.error is None and answer.message["content"] == "order_status"
        assert not router.failed
    finally:
        await router.close()


@pytest.mark.slow
async def test_a_load_waits_for_its_unload_on_the_way(
    engine: tuple[str, Engine], stores: tuple[ArtifactStore, ArtifactStore], tmp_path: Path
) -> None:
    """Serve's cache evicts an adapter while a call asks for it again: the load goes after the
    unload has landed, not into an engine that still holds it (vLLM refuses that with a 400)."""
    url, served = engine
    writer, reader = stores
    version = _adapter(writer).version
    manager = AdapterManager(url, reader, tmp_path / "cache", base_model=BASE, max_loras=4, max_lora_rank=16)
    try:
        name = await manager.ensure("intent", version)
        served.unload_seconds = 0.3
        evicting = asyncio.ensure_future(manager.unload(name))
        await asyncio.sleep(0.05)  # the unload is on its way
        assert await manager.ensure("intent", version) == name
        await evicting
        assert name in served.resident and [loaded for loaded, _ in served.loads] == [name, name]
    finally:
        await manager.close()
