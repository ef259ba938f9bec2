"""A pool's Ray Serve application on a real local Ray, and the gateway's router in front of it.

vLLM (CPU build) serves SmolLM2 with LoRA per replica. Adapters made by PEFT come from the
S3 store (SeaweedFS) and are loaded by the replica on first use through Serve's model
multiplexing; at most ``engine.maxLoras`` stay resident; adapters that cannot serve are
refused with a clear error and the replica serves on. In front, calls are routed by task
to their specialist's adapter, versions hot-load without a restart, and an invalid
specialist answer falls back to the teacher with both answers recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from protege.api.calls import CallRecord, RouteReason, UpstreamKind
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import RolloutStage
from protege.api.specialist import FallbackSpec, OutputValidation
from protege.services.nats import NatsServer
from protege.services.vllm import VllmServer
from protege.serving.pool.config import deployment_options, engine_args, on_cpus, serve_application
from protege.serving.router.table import Candidate, RoutingTable, SpecialistRoute
from protege.tasks.datasets import save_registry
from protege.tasks.discovery.tasks import (
    Exemplar,
    RouterProfile,
    Task,
    TaskRegistry,
    fingerprint,
    tenant_segment_counts,
)
from protege.tasks.examples import example_from_record
from protege.testing.plugin import RunningGateway, ServedPool, make_lora_adapter, records_of
from protege.workload import generate

POOL = SpecialistPoolSpec.model_validate(
    {
        "baseModel": {"source": "smollm2-135m"},
        "engine": {"maxLoras": 2, "maxLoraRank": 16, "maxModelLen": 2048},
        "replicas": {"min": 1, "max": 2, "targetOngoingRequests": 4},
        "resources": {"gpu": 0, "cpu": "1", "memory": "3Gi"},
        "teacher": {"url": "http://teacher.example/v1", "model": "big"},
    }
)


def test_serve_config_comes_from_the_pool_spec() -> None:
    options = deployment_options(POOL)
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 4,
    }
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0, "memory": 3 * 2**30}
    app = serve_application("orders", POOL)
    assert (
        app["import_path"] == "protege.serving.pool.app:build"
        and app["args"]["spec"]["engine"]["maxLoras"] == 2
    )


def test_gpu_pools_run_vllm_with_cuda_graphs_and_cpu_pools_eager() -> None:
    """Graph capture costs a CPU pool minutes of start for little; a GPU pool loses decode speed without."""
    assert "--enforce-eager" in engine_args(POOL) and "--tensor-parallel-size" not in engine_args(POOL)
    gpu = POOL.model_copy(
        update={
            "resources": POOL.resources.model_copy(update={"gpu": 2}),
            "engine": POOL.engine.model_copy(update={"tensor_parallel_size": 2}),
        }
    )
    args = engine_args(gpu)
    assert "--enforce-eager" not in args and args[args.index("--tensor-parallel-size") + 1] == "2"
    assert deployment_options(gpu)["ray_actor_options"]["num_gpus"] == 2  # the replica's GPUs, once
    # the CPU build's engine core in the server's process (1.5× the decode of its own process here)
    assert (on_cpus(POOL), on_cpus(gpu)) == (True, False)

    def multiprocessing(in_process: bool) -> str | None:
        server = VllmServer(Path("/nonexistent"), Path("/model"), "m", on_cpus=in_process)
        return server.environment().get("VLLM_ENABLE_V1_MULTIPROCESSING")

    assert (multiprocessing(True), multiprocessing(False)) == (
        "0",
        os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"),
    )


def _chat(pool: ServedPool, adapter: str | None, text: str = "hello") -> httpx.Response:
    """A call as a gateway makes it: with the pool token."""
    headers = {"serve_multiplexed_model_id": adapter, **pool.headers} if adapter else pool.headers
    body = {
        "model": adapter or "smollm2-135m",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 5,
    }
    return httpx.post(f"{pool.url}/v1/chat/completions", json=body, headers=headers, timeout=180)


def _resident(pool: ServedPool) -> set[str]:
    """The adapters the pool's engine holds now (its /v1/models, less the base model)."""
    models = httpx.get(f"{pool.url}/v1/models", headers=pool.headers, timeout=30).json()["data"]
    return {m["id"] for m in models} - {"smollm2-135m"}


@pytest.mark.slow
def test_replicas_preload_what_the_routing_table_routes_to(
    smollm2_pool: ServedPool, smollm2: Path, tmp_path: Path
) -> None:
    """Before any call: a route's active version, then its candidate in shadow, are resident; a
    version that cannot load is left out and the rest still load; a preload takes free slots only
    (maxLoras 2), never evicting. (First in the module: the replica holds no adapter yet.)"""
    ours = {"base_model": "smollm2-135m"}
    active, shadowed, later = (
        smollm2_pool.store.put_artifact(
            "adapter", name, make_lora_adapter(smollm2, tmp_path / name, 8, i), ours
        ).version
        for i, name in enumerate(("live", "live", "later"))
    )

    def route(name: str, active: str | None, candidate: str | None = None) -> SpecialistRoute:
        stage = Candidate(version=candidate, stage=RolloutStage.SHADOW) if candidate else None
        return SpecialistRoute(
            specialist=name, tenant="acme", task_id=f"task-{name}", active=active, candidate=stage
        )

    def settled(expected: set[str], seconds: float) -> set[str]:
        deadline = time.monotonic() + seconds
        while (found := _resident(smollm2_pool)) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        return found

    assert _resident(smollm2_pool) == set()
    # wanted, in order: live@active, missing@... (not in the store: fails), live@shadowed
    table = RoutingTable(
        routes=[route("missing", None, "v0000000000000000"), route("live", active, shadowed)]
    )
    try:
        smollm2_pool.routes.write_text(table.model_dump_json())
        loaded = {f"live@{active}", f"live@{shadowed}"}
        assert settled(loaded, 120) == loaded
        # a third version routed to: no slot is free, and none is taken from what is resident
        smollm2_pool.routes.write_text(table.replacing("later", route("later", later)).model_dump_json())
        assert settled(loaded | {f"later@{later}"}, 5) == loaded
    finally:
        smollm2_pool.routes.write_text(RoutingTable().model_dump_json())


def test_a_pool_replica_multiplexes_adapters_from_the_store(
    smollm2_pool: ServedPool, smollm2: Path, tmp_path: Path
) -> None:
    serve_pool, pool_store = smollm2_pool, smollm2_pool.store
    # only a holder of the pool token (a gateway) is answered; health stays open
    anyone = {"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        chat = f"{serve_pool.url}/v1/chat/completions"
        refused = httpx.post(chat, json=anyone, headers=headers, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{serve_pool.url}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{serve_pool.url}/health", timeout=30).status_code == 200
    ours = {"base_model": "smollm2-135m"}
    versions = [
        pool_store.put_artifact(
            "adapter", f"spec{i}", make_lora_adapter(smollm2, tmp_path / f"a{i}", 8, i), ours
        ).version
        for i in range(3)
    ]
    plain = _chat(serve_pool, None)
    assert plain.status_code == 200  # the base model
    # SmolLM2's template knows no tools: the replica writes them into the prompt (Hermes)
    [call] = generate(1, seed=3, families=("tool",))
    body = {**call.request, "model": "smollm2-135m", "messages": [{"role": "user", "content": "hello"}]}
    with_tools = httpx.post(
        f"{serve_pool.url}/v1/chat/completions",
        json={**body, "max_tokens": 5},
        headers=serve_pool.headers,
        timeout=180,
    )
    assert with_tools.status_code == 200, with_tools.text
    added = with_tools.json()["usage"]["prompt_tokens"] - plain.json()["usage"]["prompt_tokens"]
    assert added > 80  # the preamble and search_flights' schema reached the model

    first = _chat(serve_pool, f"spec0@{versions[0]}")
    assert first.status_code == 200, first.text
    assert first.json()["model"] == f"spec0@{versions[0]}"  # vLLM answered with the adapter
    for i in (1, 2):
        assert _chat(serve_pool, f"spec{i}@{versions[i]}").status_code == 200
    # maxLoras 2: spec0 evicted (LRU)
    assert _resident(serve_pool) == {f"spec1@{versions[1]}", f"spec2@{versions[2]}"}
    assert _chat(serve_pool, f"spec0@{versions[0]}").status_code == 200  # and loaded again on demand

    wide = pool_store.put_artifact(
        "adapter", "wide", make_lora_adapter(smollm2, tmp_path / "w", 32, 9), ours
    ).version
    refused = _chat(serve_pool, f"wide@{wide}")
    assert (
        refused.status_code == 422
        and "above the pool's engine.maxLoraRank 16" in refused.json()["error"]["message"]
    )
    unknown = _chat(serve_pool, "spec0@v0000000000000000")
    assert unknown.status_code == 422 and "no such adapter version" in unknown.json()["error"]["message"]
    assert _chat(serve_pool, f"spec1@{versions[1]}").status_code == 200  # the replica serves on


@pytest.fixture(scope="module")
def adapters(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {
        name: make_lora_adapter(smollm2, root / name, rank, seed)
        for name, rank, seed in [("a", 8, 1), ("b", 8, 2), ("wide", 32, 3)]
    }
    broken = root / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((made["a"] / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return {**made, "broken": broken}


def task_of(family: str, tenant: str) -> tuple[Task, dict[str, int]]:
    """A task of one workload family and the segment counts its fingerprint was read with."""
    examples = [
        example_from_record(call.to_record().model_copy(update={"tenant": tenant}))
        for call in generate(4, seed=5, families=(family,))
    ]
    counts = tenant_segment_counts(examples)[tenant]
    task = Task(
        id=f"task-{family}",
        name=family,
        size=len(examples),
        output_kind=examples[0].output_kind,
        example_ids=[e.id for e in examples],
        exemplars=[Exemplar(id=examples[0].id, user_text=examples[0].user_text)],
        router=RouterProfile(
            fingerprint=fingerprint(examples[0], counts), centroids=[], threshold=0.5, embedding_model="x"
        ),
        first_seen=datetime.now(UTC),
    )
    return task, counts


def request_of(family: str, seed: int = 11) -> dict[str, Any]:
    record = generate(1, seed=seed, families=(family,))[0].to_record()
    body = record.request.model_dump(exclude_none=True)
    return {**body, "model": "stub-teacher", "max_tokens": 12, "temperature": 0}


@pytest.mark.slow
def test_calls_route_to_their_specialists_and_fall_back_cleanly(  # noqa: PLR0915 (one engine, one story)
    start_gateway: Callable[..., RunningGateway],
    smollm2_pool: ServedPool,
    nats_server: NatsServer,
    adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    store = smollm2_pool.store
    table_file = tmp_path / "routes.json"
    engine = smollm2_pool.url
    gateway = start_gateway(
        artifact_store=store.url,
        s3=smollm2_pool.s3,
        pool_token=smollm2_pool.token,  # the gateway holds the pool's token; without it the engine refuses
        router={"enabled": True, "engine_url": engine, "table": str(table_file), "refresh_seconds": 0.01},
    )
    tenant = gateway.tenant
    (intent, intent_counts), (extract, extract_counts) = task_of("intent", tenant), task_of("extract", tenant)
    counts = {tenant: {**intent_counts, **extract_counts}}
    save_registry(store, TaskRegistry(tasks=[intent, extract], prompt_segments=counts))
    ours = {"base_model": "smollm2-135m"}
    v_intent = store.put_artifact("adapter", "intent-spec", adapters["a"], ours).version
    v_extract = store.put_artifact("adapter", "extract-spec", adapters["b"], ours).version
    v_broken = store.put_artifact("adapter", "intent-spec", adapters["broken"], ours).version
    v_wide = store.put_artifact("adapter", "wide-spec", adapters["wide"], ours).version
    v_foreign = store.put_artifact(
        "adapter", "foreign-spec", adapters["b"], {"base_model": "qwen2.5-0.5b"}
    ).version

    router = gateway.server.server.config.app.state.gateway.router
    settings = gateway.server.server.config.app.state.gateway.settings

    def write(routes: list[SpecialistRoute]) -> None:
        table = RoutingTable(routes=routes)
        table_file.write_text(table.model_dump_json())
        for _ in range(500):  # the gateway's background refresh, slower on a busy machine
            if router.table == table:
                return  # the next call sees the new table
            time.sleep(0.01)
        raise AssertionError("the gateway never read the new routing table")

    intent = SpecialistRoute(specialist="intent-spec", tenant=tenant, task_id="task-intent", active=v_intent)
    extract = SpecialistRoute(
        specialist="extract-spec",
        tenant=tenant,
        task_id="task-extract",
        active=v_extract,
        fallback=FallbackSpec(
            validate_output=OutputValidation.JSON_SCHEMA,
            json_schema={"type": "object", "required": ["order_id"]},
        ),
    )
    write([intent, extract])
    client = httpx.Client(
        base_url=gateway.server.url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=120
    )

    def call(body: dict[str, Any]) -> httpx.Response:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response

    # 1. routed by task: intent calls to intent-spec, answered by the adapter
    first = call(request_of("intent"))
    assert first.headers["x-protege-upstream"] == f"intent-spec@{v_intent}"
    assert first.json()["model"] == "stub-teacher"  # the caller sees the model it asked for

    # 2. an extract call: the random adapter's answer is no JSON object with order_id → teacher
    second = call(request_of("extract"))
    assert "x-protege-upstream" not in second.headers and second.json()["model"] == "stub-teacher"

    # 3. a streamed call gets the specialist's answer as server-sent events
    streamed = call({**request_of("intent", seed=12), "stream": True})
    assert streamed.text.startswith("data: ") and streamed.text.rstrip().endswith("data: [DONE]")

    # 4. a broken new version in canary at 100%: it fails to load, the teacher answers, then the
    #    active version keeps the traffic; nothing was loaded for it
    write(
        [
            intent.model_copy(
                update={
                    "candidate": Candidate(version=v_broken, stage=RolloutStage.CANARY, traffic_percent=100)
                }
            ),
            extract,
        ]
    )
    broken = call(request_of("intent", seed=13))
    assert "x-protege-upstream" not in broken.headers
    after = call(request_of("intent", seed=14))
    assert after.headers["x-protege-upstream"] == f"intent-spec@{v_intent}"

    # 5. hot-load: a newly trained version becomes active, no restart
    v_new = store.put_artifact("adapter", "intent-spec", adapters["b"], {**ours, "note": "retrained"}).version
    write([intent.model_copy(update={"active": v_new}), extract])
    hot = call(request_of("intent", seed=15))
    assert hot.headers["x-protege-upstream"] == f"intent-spec@{v_new}"

    # 5b. the old version in shadow: answered alongside, scored against the returned answer, not returned
    shadow = Candidate(version=v_intent, stage=RolloutStage.SHADOW)
    write([intent.model_copy(update={"active": v_new, "candidate": shadow}), extract])
    shadowed = call(request_of("intent", seed=19))
    assert shadowed.headers["x-protege-upstream"] == f"intent-spec@{v_new}"
    # 5c. as many shadow answers awaited as allowed: the call is answered, and not shadowed
    settings.router.max_shadow_in_flight = 0
    unshadowed = call(request_of("intent", seed=20))
    assert unshadowed.headers["x-protege-upstream"] == f"intent-spec@{v_new}"
    settings.router.max_shadow_in_flight = 16
    skipped = httpx.get(gateway.metrics_url + "/metrics").text
    assert (
        f'protege_router_shadows_skipped_total{{specialist="intent-spec",version="{v_intent}"}} 1.0'
        in skipped
    )

    # 6. unfit adapters: too wide a rank, another base model → teacher, never loaded
    write(
        [
            intent.model_copy(update={"active": v_new}),
            SpecialistRoute(specialist="wide-spec", tenant=tenant, task_id="task-extract", active=v_wide),
        ]
    )
    assert "x-protege-upstream" not in call(request_of("extract", seed=16)).headers
    write(
        [
            SpecialistRoute(
                specialist="foreign-spec", tenant=tenant, task_id="task-intent", active=v_foreign
            ),
            extract,
        ]
    )
    assert "x-protege-upstream" not in call(request_of("intent", seed=17)).headers

    # 7. pinned by name: unknown specialist or version → 404 in OpenAI's format
    missing = client.post("/v1/chat/completions", json={**request_of("intent"), "model": "extract-spec@nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert "no version 'nope'" in missing.json()["error"]["message"]
    pinned = call({**request_of("intent", seed=18), "model": "extract-spec"})
    assert pinned.headers["x-protege-upstream"] == f"extract-spec@{v_extract}"

    records = [r for r in records_of(nats_server.url, tenant, expect=11) if isinstance(r, CallRecord)]
    assert len(records) == 11  # the refused 404 is no call
    by_reason: dict[RouteReason, list[CallRecord]] = {}
    for record in records:
        by_reason.setdefault(record.route.reason, []).append(record)
    served = [r for r in records if r.route.target is UpstreamKind.SPECIALIST]
    assert {r.upstream.model for r in served if r.upstream} == {
        f"intent-spec@{v_intent}",
        f"intent-spec@{v_new}",
        f"extract-spec@{v_extract}",
    }
    [with_shadow] = [r for r in records if r.alternate and r.alternate.upstream.version == v_intent]
    assert with_shadow.upstream is not None and with_shadow.upstream.version == v_new
    assert with_shadow.alternate is not None and with_shadow.alternate.agreement is not None
    assert with_shadow.alternate.response is not None and with_shadow.alternate.rejection is None
    [invalid] = by_reason[RouteReason.FALLBACK_INVALID_OUTPUT]
    assert (
        invalid.upstream is not None
        and invalid.upstream.kind is UpstreamKind.TEACHER
        and invalid.response is not None
    )
    assert invalid.alternate is not None and invalid.alternate.response is not None  # both answers kept
    assert "order_id" in (invalid.alternate.rejection or "") or "not JSON" in (
        invalid.alternate.rejection or ""
    )
    errors = by_reason[RouteReason.FALLBACK_SPECIALIST_ERROR]
    messages = " | ".join(r.alternate.error.message for r in errors if r.alternate and r.alternate.error)
    assert "the engine refused the adapter" in messages
    assert "above the pool's engine.maxLoraRank 16" in messages
    assert "trained on 'qwen2.5-0.5b'" in messages
    resident = _resident(smollm2_pool)
    assert f"intent-spec@{v_broken}" not in resident and f"wide-spec@{v_wide}" not in resident
    assert len(resident) <= 2  # at most engine.maxLoras resident (LRU eviction)
    metrics = httpx.get(gateway.metrics_url + "/metrics", timeout=30).text
    assert 'protege_router_calls_total{reason="fallback_invalid_output"' in metrics
