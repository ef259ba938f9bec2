"""The real kopf operator against kmock's Kubernetes emulator: a pool's children and status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]


def register(kmock: Any) -> None:
    kmock.resources.load_bundled()
    for resource, kind in [
        ("protege.dev/v1alpha1/specialistpools", "SpecialistPool"),
        ("protege.dev/v1alpha1/specialists", "Specialist"),
        ("ray.io/v1/rayservices", "RayService"),
        ("ray.io/v1/rayjobs", "RayJob"),
    ]:
        info = kmock.resources[resource]
        info.kind, info.namespaced, info.verbs, info.subresources = kind, True, VERBS, {"status"}


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

    register(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    monkeypatch.setenv("PROTEGE_OPERATOR_STATUS_INTERVAL", "0.5")
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
