"""A pool's Ray Serve application on a real local Ray: vLLM (CPU build) with LoRA per replica.

Adapters come from the S3 store (SeaweedFS), are loaded by the replica on first use through
Serve's model multiplexing, and at most ``engine.maxLoras`` stay resident. Adapters that
cannot serve are refused with a clear error and the replica keeps serving.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from protege.api.pool import SpecialistPoolSpec
from protege.services.process import free_port
from protege.services.seaweedfs import SeaweedS3
from protege.serving.pool.config import deployment_options, serve_application
from protege.serving.router.table import RoutingTable, SpecialistRoute
from protege.store.artifacts import ArtifactStore
from protege.testing import RunningGateway, make_lora_adapter

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


@pytest.fixture(scope="module")
def pool_store(seaweed_s3: SeaweedS3) -> ArtifactStore:
    return ArtifactStore(f"s3://protege-test/{uuid.uuid4().hex}", seaweed_s3.storage_options())


@pytest.fixture(scope="module")
def serve_pool(
    pool_store: ArtifactStore, seaweed_s3: SeaweedS3, model_store: Path, smollm2: Path
) -> Iterator[str]:
    import ray
    from ray import serve

    from protege.serving.pool.app import build

    key, secret = seaweed_s3.credentials
    env = {
        "PROTEGE_MODEL_STORE": str(model_store),
        "PROTEGE_ARTIFACT_STORE": pool_store.url,
        "PROTEGE_S3__ENDPOINT_URL": seaweed_s3.endpoint_url,
        "PROTEGE_S3__ACCESS_KEY_ID": key,
        "PROTEGE_S3__SECRET_ACCESS_KEY": secret,
    }
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
        runtime_env={"env_vars": env},
    )
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"pool": "orders", "spec": POOL.to_kube()}), name="orders", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _chat(url: str, adapter: str | None, text: str = "hello") -> httpx.Response:
    headers = {"serve_multiplexed_model_id": adapter} if adapter else {}
    body = {
        "model": adapter or "smollm2-135m",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 5,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=180)


@pytest.mark.slow
def test_a_pool_replica_multiplexes_adapters_from_the_store(  # noqa: PLR0917 (fixtures)
    serve_pool: str, pool_store: ArtifactStore, seaweed_s3: SeaweedS3, smollm2: Path, tmp_path: Path,
    start_gateway: Callable[..., RunningGateway],
) -> None:  # fmt: skip
    ours = {"base_model": "smollm2-135m"}
    versions = [
        pool_store.put_artifact(
            "adapter", f"spec{i}", make_lora_adapter(smollm2, tmp_path / f"a{i}", 8, i), ours
        ).version
        for i in range(3)
    ]
    assert _chat(serve_pool, None).status_code == 200  # the base model

    first = _chat(serve_pool, f"spec0@{versions[0]}")
    assert first.status_code == 200, first.text
    assert first.json()["model"] == f"spec0@{versions[0]}"  # vLLM answered with the adapter
    for i in (1, 2):
        assert _chat(serve_pool, f"spec{i}@{versions[i]}").status_code == 200
    resident = {m["id"] for m in httpx.get(f"{serve_pool}/v1/models", timeout=30).json()["data"]} - {
        "smollm2-135m"
    }
    assert resident == {f"spec1@{versions[1]}", f"spec2@{versions[2]}"}  # maxLoras 2: spec0 evicted (LRU)
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

    # the gateway's router in front: the replica loads adapters, the gateway only names versions
    table = tmp_path / "routes.json"
    key, secret = seaweed_s3.credentials
    gateway = start_gateway(
        artifact_store=pool_store.url,
        s3={"endpoint_url": seaweed_s3.endpoint_url, "access_key_id": key, "secret_access_key": secret},
        router={"enabled": True, "engine_url": serve_pool, "manage_adapters": False, "table": str(table)},
    )
    routes = [
        SpecialistRoute(specialist="spec1", tenant=gateway.tenant, task_id="t1", active=versions[1]),
        SpecialistRoute(specialist="wide", tenant=gateway.tenant, task_id="t2", active=wide),
    ]
    table.write_text(RoutingTable(routes=routes).model_dump_json())

    def call(model: str) -> httpx.Response:
        return httpx.post(
            f"{gateway.server.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            headers={"Authorization": f"Bearer {gateway.key}"},
            timeout=180,
        )

    served = call("spec1")
    assert served.status_code == 200 and served.headers["x-protege-upstream"] == f"spec1@{versions[1]}"
    refused_by_pool = call("wide")
    assert refused_by_pool.status_code == 502 and "maxLoraRank" in refused_by_pool.json()["error"]["message"]
