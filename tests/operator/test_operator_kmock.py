"""The real kopf operator against kmock's Kubernetes emulator: a pool's children and status.

KubeRay is the double of :mod:`protege.testing.kuberay` (KubeRay v1.7.0's validation and its RayJob and
RayService state machines, on a clock the tests move); the operator reads what it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.api.jobs import RESULTS_AREA
from protege.testing.kube_api import KubeApiEmulator
from protege.testing.kuberay import KubeRayDouble, parse_timestamp
from protege.testing.plugin import register_kmock_resources

# the API server's write rules: server-side apply needs a field manager, resourceVersions move and are checked
pytestmark = [pytest.mark.slow, pytest.mark.kmock(cls=KubeApiEmulator)]
ROOT = Path(__file__).resolve().parents[2]
KUBERAY_CRDS = Path(__file__).parent / "kuberay-crds"  # KubeRay v1.7.0, vendored
OPERATOR = ("run", "-A", "--standalone", "-m", "protege.operator.main")


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


@contextlib.asynccontextmanager
async def operator_running(*args: str) -> AsyncIterator[Any]:
    """The real operator (kopf's ``KopfRunner``, in a thread), stopped without blocking this loop.

    kmock and the KubeRay double answer the operator from this event loop: a blocking stop would
    leave the requests of a pass under way unanswered, and the operator's cleanup would wait for
    that pass until its drain timeout (30 s).
    """
    from kopf.testing import KopfRunner

    runner = KopfRunner(list(args or OPERATOR))
    runner.__enter__()
    try:
        yield runner
    except BaseException as error:
        await asyncio.to_thread(runner.__exit__, type(error), error, error.__traceback__)
        raise
    await asyncio.to_thread(runner.__exit__, None, None, None)


@pytest.fixture(scope="session")
def kuberay_crds() -> Any:
    """KubeRay's CRDs: the double refuses, as the API server would, objects that break their schemas."""
    from protege.crds.validate import CrdCatalogue

    return CrdCatalogue.from_paths(sorted(KUBERAY_CRDS.glob("*.yaml")))


async def until(check: Callable[[], Any], seconds: float = 30, what: Callable[[], str] | None = None) -> Any:
    """``check()`` once it is truthy; after ``seconds``, an AssertionError saying ``what()`` (read then)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out: {what()}" if what else "timed out")


def stored(kmock: Any, resource: str, name: str) -> dict[str, Any] | None:
    try:
        history = kmock.objects[resource, "agents", name]
    except KeyError:
        return None
    return None if history.deleted else dict(history.raw)


def pool_body(name: str, uid: str, **spec: Any) -> dict[str, Any]:
    pool = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    pool["metadata"] |= {
        "name": name,
        "namespace": "agents",
        "uid": uid,
        "generation": 1,
        "resourceVersion": "1",
    }
    pool["spec"] |= spec
    return dict(pool)


def pool_status(kmock: Any, name: str) -> dict[str, Any]:
    return dict(stored(kmock, "protege.dev/v1alpha1/specialistpools", name) or {}).get("status") or {}


def labelled(kmock: Any, resource: str, label: str, value: str) -> list[dict[str, Any]]:
    """The stored objects of a kind that carry a label (children are found by their owner's label)."""
    found = []
    for key in list(kmock.objects):
        obj = stored(kmock, key[0], key[2]) if key[0] == resource else None
        if obj is not None and (obj["metadata"].get("labels") or {}).get(label) == value:
            found.append(obj)
    return found


async def test_a_pool_gets_its_children_and_becomes_ready(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, kuberay_crds: Any
) -> None:
    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    pool = pool_body("smollm2-pool", "u-1")
    broken = pool_body("broken", "u-2", engine={"maxLoraRank": 33})

    # KubeRay acts when the test says so (settle): the pool is seen Provisioning first, deterministically.
    async with KubeRayDouble(kmock, background=False, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "broken"] = broken
            service = await until(lambda: stored(kmock, "ray.io/v1/rayservices", "smollm2-pool-serve"))
            assert service["metadata"]["ownerReferences"][0]["uid"] == "u-1"
            # applied in turn
            await until(lambda: stored(kmock, "apps/v1/deployments", "smollm2-pool-gateway"))
            await until(lambda: stored(kmock, "v1/configmaps", "smollm2-pool-routes"))

            await until(lambda: pool_status(kmock, "smollm2-pool").get("phase") == "Provisioning")
            await kuberay.settle()  # KubeRay: a cluster, the Serve app deployed, Ready
            ray_status = (stored(kmock, "ray.io/v1/rayservices", "smollm2-pool-serve") or {})["status"]
            assert ray_status["serviceStatus"] == "Running"
            ready = await until(
                lambda: (
                    pool_status(kmock, "smollm2-pool").get("phase") == "Ready"
                    and pool_status(kmock, "smollm2-pool")
                )
            )
            [condition] = ready["conditions"]
            assert (condition["type"], condition["status"], condition["reason"]) == (
                "Ready",
                "True",
                "ServeRunning",
            )
            assert ready["observedGeneration"] == 1
            # the declared fields, filled: where agents point, and KubeRay's count of ready Serve endpoints
            assert ready["endpoint"] == "http://smollm2-pool-gateway.agents.svc/v1"
            assert ready["readyReplicas"] == ray_status["numServeEndpoints"] >= 1

            failed = await until(
                lambda: pool_status(kmock, "broken").get("phase") == "Failed" and pool_status(kmock, "broken")
            )
            assert "spec.engine.maxLoraRank" in failed["conditions"][0]["message"]
            assert stored(kmock, "ray.io/v1/rayservices", "broken-serve") is None  # nothing created

            # the gateway's autoscaler and disruption budget are children too; the count is the HPA's
            gateway = "smollm2-pool-gateway"
            hpa = await until(lambda: stored(kmock, "autoscaling/v2/horizontalpodautoscalers", gateway))
            budget = stored(kmock, "policy/v1/poddisruptionbudgets", gateway) or {}
            for child in (hpa, budget):
                assert child["metadata"]["ownerReferences"][0]["uid"] == "u-1"
            assert "replicas" not in (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]
            # the HPA scales the gateway to 5; a change of the pool re-applies every child and leaves it
            await api_patch(
                kmock, f"/apis/apps/v1/namespaces/agents/deployments/{gateway}", {"spec": {"replicas": 5}}
            )
            changed = {"spec": {"gateway": {"replicas": {"min": 2, "max": 6}}}}
            await api_patch(
                kmock, "/apis/protege.dev/v1alpha1/namespaces/agents/specialistpools/smollm2-pool", changed
            )
            await until(
                lambda: (
                    (stored(kmock, "autoscaling/v2/horizontalpodautoscalers", gateway) or {})["spec"][
                        "maxReplicas"
                    ]
                    == 6
                )
            )
            assert (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]["replicas"] == 5

            # what the pool stops asking for goes from its children (server-side apply prunes it)
            def pod_annotations() -> dict[str, Any]:
                template = (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]["template"]
                return dict(template["metadata"].get("annotations") or {})

            pool_path = "/apis/protege.dev/v1alpha1/namespaces/agents/specialistpools/smollm2-pool"
            annotated = {"spec": {"podTemplate": {"gateway": {"annotations": {"team": "search"}}}}}
            await api_patch(kmock, pool_path, annotated)
            await until(lambda: pod_annotations().get("team") == "search")
            await api_patch(kmock, pool_path, {"spec": {"podTemplate": None}})
            await until(lambda: "team" not in pod_annotations(), what=lambda: str(pod_annotations()))
            assert (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]["replicas"] == 5  # the HPA's
        assert runner.exception is None


async def api_patch(kmock: Any, path: str, patch: dict[str, Any]) -> None:
    """A merge patch through the emulator's API, as kubectl or a controller (the HPA) sends it."""
    import aiohttp

    headers = {"Content-Type": "application/merge-patch+json"}
    url = str(kmock.url).rstrip("/") + path
    async with (
        aiohttp.ClientSession() as session,
        session.patch(url, json=patch, headers=headers) as response,
    ):
        response.raise_for_status()


VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}


def undeclared_calls(kmock: Any) -> list[str]:
    """The operator's requests (kopf's and its client's, by their User-Agent) that its declared API uses
    (protege.operator.api_access, which the chart's RBAC grants exactly) do not cover; discovery aside."""
    from protege.operator.api_access import declares

    undeclared, checked = [], set()
    for request in list(kmock):
        agent = request.headers.get("User-Agent", "")
        if not agent.startswith(("kopf/", "protege-operator/")) or request.resource is None:
            continue  # the KubeRay double's, the test's own
        if not request.resource.plural:
            continue  # discovery: /api/v1, /apis/<group>/<version>
        checked.add(agent.split("/")[0])
        action = VERBS.get(request.action.name) if request.action else None
        verb = {"PATCH": "patch", "PUT": "update"}.get(str(request.method.value), action)
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        if verb is None or not declares(request.resource.group, resource, verb):
            undeclared.append(f"{request.method.value} {request.url.path} ({verb} {resource})")
    return undeclared + [f"no request from {agent} seen" for agent in {"kopf", "protege-operator"} - checked]


async def test_a_pool_the_platform_does_not_allow_fails_and_the_others_get_network_policies(
    kmock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pools.allowedImages / allowedExtraArgs / allowedServiceAccounts and networkPolicies, as the chart
    passes them."""
    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    monkeypatch.setenv("PROTEGE_OPERATOR_ALLOWED_IMAGES", json.dumps(["registry.example/serving/*"]))
    monkeypatch.setenv("PROTEGE_OPERATOR_ALLOWED_EXTRA_ARGS", json.dumps(["enablePrefixCaching"]))
    monkeypatch.setenv("PROTEGE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS", json.dumps(["s3-*"]))
    kuberay = [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay"}}}
    ]
    monkeypatch.setenv(
        "PROTEGE_OPERATOR_NETWORK_POLICIES", json.dumps({"kuberay": kuberay, "prometheus": []})
    )
    rogue = pool_body(
        "rogue",
        "u-9",
        image="evil.example/miner:1",
        engine={"extraArgs": {"trustRemoteCode": True}},
        podTemplate={"training": {"serviceAccountName": "cluster-admin-sa"}},
    )
    allowed = pool_body("smollm2-pool", "u-1", image="registry.example/serving/vllm:1")
    resource = "protege.dev/v1alpha1/specialistpools"
    async with operator_running() as runner:
        kmock.objects[resource, "agents", "rogue"] = rogue
        kmock.objects[resource, "agents", "smollm2-pool"] = allowed
        failed = await until(
            lambda: pool_status(kmock, "rogue").get("phase") == "Failed" and pool_status(kmock, "rogue")
        )
        stalled = {c["type"]: c for c in failed["conditions"]}["Stalled"]
        assert (stalled["status"], stalled["reason"]) == ("True", "NotAllowed")
        for needle in (
            "spec.image 'evil.example/miner:1' is not allowed",
            "'registry.example/serving/*' (pools.allowedImages)",
            "spec.engine.extraArgs.trustRemoteCode (true) is not allowed",
            "'enablePrefixCaching' (pools.allowedExtraArgs)",
            "spec.podTemplate.training.serviceAccountName 'cluster-admin-sa' is not allowed",
            "'s3-*' (pools.allowedServiceAccounts)",
        ):
            assert needle in stalled["message"], needle
        serve = await until(
            lambda: stored(kmock, "networking.k8s.io/v1/networkpolicies", "smollm2-pool-serve")
        )
        assert serve["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        assert {
            "from": kuberay,
            "ports": [{"port": 8265, "protocol": "TCP"}, {"port": 8000, "protocol": "TCP"}],
        } in (serve["spec"]["ingress"])
        await until(lambda: stored(kmock, "networking.k8s.io/v1/networkpolicies", "smollm2-pool-gateway"))
        training = await until(
            lambda: stored(kmock, "networking.k8s.io/v1/networkpolicies", "smollm2-pool-training")
        )
        assert training["spec"]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/component": "training",
            "protege.dev/pool": "smollm2-pool",
        }
        assert stored(kmock, "ray.io/v1/rayservices", "rogue-serve") is None  # nothing for the refused one
        assert not labelled(
            kmock, "networking.k8s.io/v1/networkpolicies", "protege.dev/specialistpool", "rogue"
        )
    assert runner.exception is None
    assert undeclared_calls(kmock) == []


async def test_an_operator_watching_named_namespaces_needs_no_more_than_the_charts_roles(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, kuberay_crds: Any
) -> None:
    """operator.watchNamespaces, as the chart installs it: its command line, and its RBAC enforced by
    the emulator (a Role in each watched namespace, a ClusterRole with kopf's cluster-scoped reads).
    The watched namespace's pool becomes Ready with no request refused; a pool elsewhere gets nothing."""
    from protege.operator.settings import RELEASE_NAMESPACE, operator_pod, render_chart
    from protege.testing.rbac import Rbac

    objects = render_chart({"operator": {"watchNamespaces": ["agents"]}})
    pod = operator_pod(objects)
    [container] = pod["containers"]
    args = [a for a in container["args"] if not a.startswith("--liveness=")]  # no probe server in a test
    assert "--namespace=agents" in args and "--all-namespaces" not in args
    register_kmock_resources(kmock)
    kmock.rbac = Rbac.for_service_account(objects, RELEASE_NAMESPACE, pod["serviceAccountName"])
    kmock.namespaces |= {"agents", "elsewhere"}  # kopf lists them to find the ones it watches
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    outside = pool_body("outside", "u-2")
    outside["metadata"]["namespace"] = "elsewhere"
    resource = "protege.dev/v1alpha1/specialistpools"
    async with (
        KubeRayDouble(kmock, background=False, crds=kuberay_crds) as kuberay,
        operator_running(*args) as runner,
    ):
        kmock.objects[resource, "agents", "smollm2-pool"] = pool_body("smollm2-pool", "u-1")
        kmock.objects[resource, "elsewhere", "outside"] = outside
        await until(lambda: stored(kmock, "ray.io/v1/rayservices", "smollm2-pool-serve"))
        await until(lambda: stored(kmock, "apps/v1/deployments", "smollm2-pool-gateway"))
        await kuberay.settle()
        await until(lambda: pool_status(kmock, "smollm2-pool").get("phase") == "Ready")
        await asyncio.sleep(2)  # a few of the pool timer's passes (0.5 s: status, drift healing)
        assert not [key for key in list(kmock.objects) if key[1] == "elsewhere" and key[0] != resource]
        assert (kmock.objects[resource, "elsewhere", "outside"].raw.get("status") or {}) == {}
    assert runner.exception is None
    assert kmock.forbidden == []
    assert undeclared_calls(kmock) == []


async def test_a_pool_with_a_long_name_serves_or_says_why_kuberay_refused_it(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, kuberay_crds: Any
) -> None:
    """A 45-character pool: ``<pool>-serve`` would be 51, over KubeRay's 47 (ValidationFailed).

    KubeRay must get a RayService name it takes, and the pool become Ready; or, if KubeRay refuses
    the RayService, the pool must fail with KubeRay's message, never stay Provisioning.
    """
    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    name = "a-pool-whose-name-makes-its-rayservice-long-1"
    assert len(name) == 45
    async with KubeRayDouble(kmock, background=False, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", name] = pool_body(name, "u-long")
            [service] = await until(
                lambda: labelled(kmock, "ray.io/v1/rayservices", "protege.dev/specialistpool", name)
            )
            await kuberay.settle()
            ray_status = (stored(kmock, "ray.io/v1/rayservices", service["metadata"]["name"]) or {})["status"]
            refusal = next(
                (c["message"] for c in ray_status.get("conditions", []) if c["reason"] == "ValidationFailed"),
                None,
            )
            if refusal is None:
                assert ray_status["serviceStatus"] == "Running"
                await until(
                    lambda: pool_status(kmock, name).get("phase") == "Ready", what=lambda: "the pool Ready"
                )
            else:  # KubeRay refused it: the pool says so, with KubeRay's words
                failed = await until(
                    lambda: pool_status(kmock, name).get("phase") == "Failed" and pool_status(kmock, name),
                    what=lambda: (
                        f"the pool Failed with KubeRay's refusal ({refusal}); it stays "
                        f"{pool_status(kmock, name).get('phase')}"
                    ),
                )
                [condition] = failed["conditions"]
                assert condition["status"] == "False" and refusal in condition["message"]
        assert runner.exception is None


async def test_a_pool_says_why_its_serve_application_is_not_running(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, kuberay_crds: Any
) -> None:
    """KubeRay reports a failed Serve application only in applicationStatuses: a DEPLOY_FAILED app of a
    new pool leaves serviceStatus empty, an UNHEALTHY app of a running one leaves it Running."""
    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    engine_error = "ValueError: LoRA rank 32 needs max_lora_rank >= 32"

    def ready_condition() -> dict[str, Any]:
        conditions = pool_status(kmock, "smollm2-pool").get("conditions") or []
        return next((dict(c) for c in conditions if c["type"] == "Ready"), {})

    async with KubeRayDouble(kmock, background=False, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool_body(
                "smollm2-pool", "u-1"
            )
            await until(lambda: stored(kmock, "ray.io/v1/rayservices", "smollm2-pool-serve"))
            kuberay.fail_serve_app("smollm2-pool-serve", "DEPLOY_FAILED", message=engine_error)
            await kuberay.settle()
            failed = await until(  # the operator looks every 0.5 s
                lambda: engine_error in ready_condition().get("message", "") and ready_condition(),
                seconds=10,
                what=lambda: (
                    f"the pool's Ready condition to carry Serve's error; it says {ready_condition()}"
                ),
            )
            assert failed["status"] == "False"

            kuberay.heal_serve_app("smollm2-pool-serve")
            await kuberay.settle()
            await until(lambda: pool_status(kmock, "smollm2-pool").get("phase") == "Ready")

            kuberay.fail_serve_app("smollm2-pool-serve", "UNHEALTHY", message="replica PoolEngine#1 died")
            await kuberay.settle()
            unhealthy = await until(
                lambda: "UNHEALTHY" in ready_condition().get("message", "") and ready_condition(),
                seconds=10,
                what=lambda: (
                    f"the pool's Ready condition to say the app is UNHEALTHY; it says {ready_condition()}"
                ),
            )
            assert unhealthy["status"] == "False"
        assert runner.exception is None


async def test_deleted_and_edited_children_are_restored_within_a_reconcile_interval(
    kmock: Any, monkeypatch: pytest.MonkeyPatch, kuberay_crds: Any
) -> None:
    """Drift: the pool's timer applies every child again (server-side apply, the operator's field
    manager), so a child deleted or edited out of band is back to its rendered spec at its next tick
    (0.5 s here; the test allows a few on a loaded machine); a field the operator does not render (the
    HPA's replica count) is left alone."""
    from protege.api.pool import SpecialistPoolSpec
    from protege.operator.children import render_pool
    from protege.operator.kube import FIELD_MANAGER
    from protege.operator.platform import Owner, Platform

    register_kmock_resources(kmock)
    monkeypatch.setenv("PROTEGE_OPERATOR_API_SERVER", str(kmock.url))
    body = pool_body("smollm2-pool", "u-1")
    owner = Owner("SpecialistPool", "smollm2-pool", "agents", "u-1")
    rendered = {
        child["kind"]: child
        for child in render_pool(owner, SpecialistPoolSpec.model_validate(body["spec"]), Platform(), None)
    }
    gateway = "smollm2-pool-gateway"
    where = {
        "RayService": ("ray.io/v1/rayservices", "smollm2-pool-serve", "/apis/ray.io/v1"),
        "Deployment": ("apps/v1/deployments", gateway, "/apis/apps/v1"),
        "Service": ("v1/services", gateway, "/api/v1"),
        "HorizontalPodAutoscaler": (
            "autoscaling/v2/horizontalpodautoscalers",
            gateway,
            "/apis/autoscaling/v2",
        ),
    }

    def path(kind: str) -> str:
        resource, name, base = where[kind]
        return f"{base}/namespaces/agents/{resource.rsplit('/', 1)[1]}/{name}"

    def as_rendered(kind: str) -> bool:
        found = stored(kmock, where[kind][0], where[kind][1])
        return found is not None and found["spec"] == rendered[kind]["spec"]

    def routes_back() -> bool:
        found = stored(kmock, "v1/configmaps", "smollm2-pool-routes")
        return found is not None and found["metadata"]["ownerReferences"][0]["uid"] == "u-1"

    async def restored(kinds: list[str]) -> None:
        await until(
            lambda: all(as_rendered(kind) for kind in kinds) and routes_back(),
            seconds=10,  # 0.5-s intervals on a loaded machine
            what=lambda: (
                f"not as rendered: {[k for k in kinds if not as_rendered(k)]}, routes {routes_back()}"
            ),
        )

    async with KubeRayDouble(kmock, background=False, crds=kuberay_crds):
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = body
            await restored(list(where))

            # deleted out of band: the RayService, the gateway's Deployment and Service, the routing table
            for kind in ("RayService", "Deployment", "Service"):
                await delete(kmock, path(kind))
            await delete(kmock, "/api/v1/namespaces/agents/configmaps/smollm2-pool-routes")
            await restored(list(where))  # (the next tick may have restored some already: no check between)

            # edited out of band: an environment variable of the gateway, the HPA's bounds; the HPA's
            # count of gateway replicas is not the operator's and stays
            container = rendered["Deployment"]["spec"]["template"]["spec"]["containers"][0]
            env = [dict(e, value="edited") if "value" in e else e for e in container["env"]]
            edited = {"containers": [{**container, "env": env}]}
            await api_patch(
                kmock, path("Deployment"), {"spec": {"replicas": 5, "template": {"spec": edited}}}
            )
            await api_patch(kmock, path("HorizontalPodAutoscaler"), {"spec": {"maxReplicas": 99}})
            await until(
                lambda: (
                    (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]["template"]
                    == rendered["Deployment"]["spec"]["template"]
                    and as_rendered("HorizontalPodAutoscaler")
                ),
                seconds=10,
                what=lambda: "the gateway's template and the HPA as rendered again",
            )
            assert (stored(kmock, "apps/v1/deployments", gateway) or {})["spec"]["replicas"] == 5
        assert runner.exception is None

    # every child written by server-side apply as the operator's field manager (the emulator refuses
    # an apply without one)
    applies = [
        r
        for r in list(kmock)
        if r.headers.get("User-Agent", "").startswith("protege-operator/") and str(r.method.value) == "PATCH"
    ]
    assert {r.resource.plural for r in applies} >= {"rayservices", "deployments", "services"}
    for request in applies:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params == {"fieldManager": FIELD_MANAGER, "force": "true"}


def task_size(store: Any) -> int:
    from protege.tasks.datasets import load_registry

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
    from protege.testing.plugin import seed_task

    register_kmock_resources(kmock)
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 80, task_id="t-extract")
    for name, value in {
        "API_SERVER": str(kmock.url),
        "ARTIFACT_STORE": store.url,
        "NATS_URL": nats_server.url,
    }.items():
        monkeypatch.setenv(f"PROTEGE_OPERATOR_{name}", value)
    identity = nats_server.endpoint("operator")  # as the chart passes it: a user, its password from a Secret
    monkeypatch.setenv("PROTEGE_NATS_AUTH__USER", identity.user)
    monkeypatch.setenv("PROTEGE_NATS_AUTH__PASSWORD", identity.password)
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


async def more_operator_passes(count: int, seconds: float = 30) -> None:
    """Wait until the operator has made ``count`` more Specialist passes (its metrics say how many)."""

    async def passes() -> float:
        exposition = await scrape(f"http://127.0.0.1:{os.environ['PROTEGE_OPERATOR_METRICS_PORT']}/metrics")
        prefix = "protege_operator_specialist_passes_total{"
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(prefix)
        )

    target = await passes() + count
    deadline = asyncio.get_running_loop().time() + seconds
    while await passes() < target:
        assert asyncio.get_running_loop().time() < deadline, f"the operator made fewer than {count} passes"
        await asyncio.sleep(0.1)


async def delete(kmock: Any, path: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.delete(f"{kmock.url}{path}") as response:
        assert response.status < 300


def store_result(store: Any, job_name: str, version: str) -> None:
    """What a training job leaves in the store when it ends: its result, under its name, and its adapter."""

    scores = {"metric": "json_fields", "specialist": 0.9, "teacher": 1.0, "relativeToTeacher": 0.9}
    result = {
        "adapter_version": version,
        "adapter_uri": "file:///a",
        "dataset_version": "d",
        "scores": scores,
    }
    store.put_object(RESULTS_AREA, job_name, json.dumps(result).encode())


def posted_events(kmock: Any) -> list[dict[str, Any]]:
    """The Events the operator posted (kmock's emulator has no generateName: it keeps only the first)."""
    return [dict(r.data) for r in list(kmock) if r.resource == "v1/events" and r.data]


def specialist_status(kmock: Any, name: str) -> dict[str, Any]:
    return dict(stored(kmock, "protege.dev/v1alpha1/specialists", name) or {}).get("status") or {}


async def test_a_specialist_trains_shadows_fails_and_cleans_up(
    kmock: Any, flywheel_cluster: tuple[Any, dict[str, Any], dict[str, Any]], kuberay_crds: Any
) -> None:
    from protege.services.process import free_port
    from protege.testing.plugin import seed_task

    store, pool, base = flywheel_cluster

    def specialist(name: str, uid: str, **spec: Any) -> dict[str, Any]:
        return specialist_body(base, name, uid, **spec)

    def status_of(name: str) -> dict[str, Any]:
        return specialist_status(kmock, name)

    resource = "protege.dev/v1alpha1/specialists"
    async with KubeRayDouble(kmock, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
            kmock.objects[resource, "agents", "sql-writer"] = specialist("sql-writer", "s-1")
            kmock.objects[resource, "agents", "bad-rank"] = specialist(
                "bad-rank", "s-2", training={"rank": 0}
            )
            [job_name] = await until(lambda: children(kmock, "ray.io/v1/rayjobs", "sql-writer-train-"))
            owner = (stored(kmock, "ray.io/v1/rayjobs", job_name) or {})["metadata"]["ownerReferences"][0]
            assert owner["uid"] == "s-1"
            training = await until(
                lambda: status_of("sql-writer").get("phase") == "Training" and status_of("sql-writer")
            )
            assert training["versions"][-1]["jobName"] == job_name and training["examples"] == task_size(
                store
            )
            assert (
                "sql-writer" in routes_of(kmock) and routes_of(kmock)["sql-writer"]["task_id"] == "t-extract"
            )  # registered
            failed = await until(
                lambda: status_of("bad-rank").get("phase") == "Failed" and status_of("bad-rank")
            )
            assert [  # kstatus: Failed, naming the field
                (c["type"], c["reason"], "spec.training.rank" in c["message"])
                for c in failed["conditions"]
                if c["status"] == "True"
            ] == [("Stalled", "InvalidSpec", True)]
            # KubeRay runs it meanwhile: a cluster, the job submitted and RUNNING until Ray says it ended
            await until(lambda: job_status(kmock, job_name).get("jobStatus") == "RUNNING")
        assert runner.exception is None

        # Restarted mid-training (with more data meanwhile): the job is found, not started again.
        seed_task(store, "extract", 120, task_id="t-extract")
        kmock.objects[resource, "agents", "other"] = specialist("other", "s-3")
        os.environ["PROTEGE_OPERATOR_METRICS_PORT"] = str(free_port())  # the first one's server lives on
        async with operator_running() as runner:
            await asyncio.sleep(2)
            assert children(kmock, "ray.io/v1/rayjobs", "sql-writer-train-") == [job_name]

            # The job stores its result and Ray reports success: the candidate goes to shadow.
            store_result(store, job_name, "va1")
            store.put_artifact("adapter", "sql-writer", {"adapter_config.json": b"{}"})
            kuberay.finish_job(job_name)
            shadow = await until(
                lambda: status_of("sql-writer").get("phase") == "Shadow" and status_of("sql-writer")
            )
            assert job_status(kmock, job_name)["jobDeploymentStatus"] == "Complete"
            assert shadow["candidateVersion"] == "va1" and shadow["versions"][-1]["state"] == "Shadow"
            assert routes_of(kmock)["sql-writer"]["candidate"] | {"since": None} == {
                "version": "va1",
                "stage": "shadow",
                "traffic_percent": 0,
                "since": None,
            }

            # A second specialist whose job fails says why (Ray's message, through KubeRay's status).
            [other_job] = await until(lambda: children(kmock, "ray.io/v1/rayjobs", "other-train-"))
            kuberay.finish_job(
                other_job,
                "FAILED",
                message="Job entrypoint command failed with exit code 2. No logs available.",
            )
            broken = await until(lambda: status_of("other").get("phase") == "Failed" and status_of("other"))
            assert "exit code 2" in broken["versions"][-1]["message"]
            assert job_status(kmock, other_job)["jobDeploymentStatus"] == "Failed"

            # kopf posts events from a background queue, so the last one may land after the status patch.
            def reasons() -> set[str]:
                return {e.get("reason") for e in posted_events(kmock)}

            await until(lambda: {"TrainingStarted", "CandidateShadowing", "TrainingFailed"} <= reasons())
            exposition = await scrape(
                f"http://127.0.0.1:{os.environ['PROTEGE_OPERATOR_METRICS_PORT']}/metrics"
            )
            for needle in (
                'protege_operator_specialists{phase="Failed"} 1.0',
                'events_total{reason="TrainingFailed"}',
            ):
                assert needle in exposition

            # Delete: the finalizer takes it out of the routes and deletes its adapters first.
            await delete(kmock, "/apis/protege.dev/v1alpha1/namespaces/agents/specialists/sql-writer")
            await until(lambda: stored(kmock, resource, "sql-writer") is None, seconds=60)
            assert "sql-writer" not in routes_of(kmock) and "other" in routes_of(kmock)
            assert store.versions("adapter", "sql-writer") == []
            assert not store.has_object(RESULTS_AREA, job_name)
        # and every call kopf and the operator's client made is one its RBAC grants
        assert (runner.exception, undeclared_calls(kmock)) == (None, [])


def job_status(kmock: Any, name: str) -> dict[str, Any]:
    return dict(stored(kmock, "ray.io/v1/rayjobs", name) or {}).get("status") or {}


async def test_a_specialist_with_a_long_name_trains_or_fails_with_kuberays_message(
    kmock: Any, flywheel_cluster: tuple[Any, dict[str, Any], dict[str, Any]], kuberay_crds: Any
) -> None:
    """A 42-character Specialist: ``<specialist[:40]>-train-<10 hex>`` was 57 characters, over KubeRay's 47.

    KubeRay must get a RayJob name it takes, and the job train a candidate; or, where KubeRay
    refuses the RayJob (``ValidationFailed``), the version must fail with KubeRay's message and a
    ``TrainingFailed`` event, never stay Training.
    """
    store, pool, base = flywheel_cluster
    name = "a-specialist-name-of-forty-two-characters1"
    assert len(name) == 42
    async with KubeRayDouble(kmock, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
            kmock.objects["protege.dev/v1alpha1/specialists", "agents", name] = specialist_body(
                base, name, "s-long"
            )
            [job] = await until(lambda: labelled(kmock, "ray.io/v1/rayjobs", "protege.dev/specialist", name))
            job_name = job["metadata"]["name"]
            deployment = await until(lambda: job_status(kmock, job_name).get("jobDeploymentStatus"))
            if deployment == "ValidationFailed":
                refusal = job_status(kmock, job_name)["message"]
                assert (
                    refusal
                    == "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"
                )

                def version() -> dict[str, Any]:
                    return dict((specialist_status(kmock, name).get("versions") or [{}])[-1])

                failed = await until(
                    lambda: version().get("state") == "Failed" and version(),
                    what=lambda: (
                        f"the version Failed with KubeRay's refusal; it is {version().get('state')} "
                        f"and the Specialist {specialist_status(kmock, name).get('phase')}"
                    ),
                )
                assert refusal in failed["message"]
                await until(
                    lambda: any(
                        e.get("reason") == "TrainingFailed" and refusal in e.get("message", "")
                        for e in posted_events(kmock)
                    ),
                    what=lambda: "a TrainingFailed event with KubeRay's message",
                )
            else:  # KubeRay took the name: the job runs and trains a candidate
                assert len(job_name) <= 47
                store_result(store, job_name, "vlong1")
                kuberay.finish_job(job_name)
                shadow = await until(
                    lambda: (
                        specialist_status(kmock, name).get("phase") == "Shadow"
                        and specialist_status(kmock, name)
                    )
                )
                assert (
                    shadow["candidateVersion"] == "vlong1" and shadow["versions"][-1]["jobName"] == job_name
                )
        assert runner.exception is None


async def test_a_finished_training_jobs_cluster_is_gone_within_minutes(
    kmock: Any, flywheel_cluster: tuple[Any, dict[str, Any], dict[str, Any]], kuberay_crds: Any
) -> None:
    """shutdownAfterJobFinishes and ttlSecondsAfterFinished: KubeRay deletes the job's RayCluster (and its
    GPUs) that long after the job ended. KubeRay v1.7.0 keeps the RayJob itself; so does the operator."""
    store, pool, base = flywheel_cluster
    async with KubeRayDouble(kmock, crds=kuberay_crds) as kuberay:
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
            kmock.objects["protege.dev/v1alpha1/specialists", "agents", "sql-writer"] = specialist_body(
                base, "sql-writer", "s-1"
            )
            [job] = await until(
                lambda: labelled(kmock, "ray.io/v1/rayjobs", "protege.dev/specialist", "sql-writer")
            )
            job_name = job["metadata"]["name"]
            await until(lambda: job_status(kmock, job_name).get("jobStatus") == "RUNNING")
            cluster = job_status(kmock, job_name)["rayClusterName"]
            assert stored(kmock, "ray.io/v1/rayclusters", cluster) is not None

            store_result(store, job_name, "va1")
            kuberay.finish_job(job_name)
            await until(lambda: specialist_status(kmock, "sql-writer").get("phase") == "Shadow")
            ended = parse_timestamp(job_status(kmock, job_name)["endTime"])

            # KubeRay's clock, not the wall clock: half a minute at a time, two hours at most.
            for _ in range(240):
                if ("RayCluster", "agents", cluster) in kuberay.deletions:
                    break
                kuberay.advance(30)
                await kuberay.settle()
            assert ("RayCluster", "agents", cluster) in kuberay.deletions, (
                "the cluster outlived the job by 2 h"
            )
            lived = kuberay.deletions["RayCluster", "agents", cluster] - ended
            assert lived <= timedelta(minutes=5), (
                f"the finished job's cluster (its GPUs) lived {lived} after it"
            )
            assert stored(kmock, "ray.io/v1/rayclusters", cluster) is None

            await more_operator_passes(2)  # the RayJob KubeRay kept still reads as the success it was
            assert job_status(kmock, job_name)["jobDeploymentStatus"] == "Complete"
            assert specialist_status(kmock, "sql-writer")["phase"] == "Shadow"
        assert runner.exception is None


async def test_both_drivers_give_a_specialist_the_same_status_and_forget_it_alike(
    kmock: Any,
    flywheel_cluster: tuple[Any, dict[str, Any], dict[str, Any]],
    kuberay_crds: Any,
    tmp_path: Path,
) -> None:
    """One lifecycle, two drivers (:mod:`protege.flywheel.lifecycle`): the same Specialists, on a cluster
    and on one machine, get the same phase and conditions (an invalid spec: Failed, Stalled InvalidSpec; a
    missing pool: Pending, Reconciling PoolNotFound; a valid one: registered, collecting data), and a
    deleted one leaves its pool's routing table on both, its adapters kept (spec.deletionPolicy Retain)."""
    from types import SimpleNamespace

    from protege.api.pool import SpecialistPoolSpec
    from protege.flywheel.data import StoreData
    from protege.flywheel.local import LocalDriver, LocalFlywheelIO, RayJobs, RouteFile
    from protege.flywheel.specialist import PoolFacts

    store, pool, base = flywheel_cluster
    waiting = base["spec"] | {
        "data": base["spec"]["data"] | {"minExamples": 10_000}
    }  # registers, never trains
    specs = {
        "bad-rank": waiting | {"training": {"rank": 0}},
        "orphan": waiting | {"pool": "no-such-pool"},
        "sql-writer": waiting | {"deletionPolicy": "Retain"},
    }
    store.put_artifact("adapter", "sql-writer", {"adapter_config.json": b"{}"})

    def summary(status: dict[str, Any]) -> tuple[Any, ...]:
        conditions = sorted((c["type"], c["status"], c["reason"]) for c in status.get("conditions") or [])
        return status.get("phase"), conditions

    # On one machine: manifests in a directory, a routing file, a local Ray it never needs.
    jobs = object.__new__(RayJobs)
    jobs.client, jobs.job_cpus, jobs.yield_cpus = SimpleNamespace(list_jobs=list), None, False  # type: ignore[assignment]
    routes = RouteFile(tmp_path / "routes.json")
    driver = LocalDriver(
        tmp_path / "flywheel",
        LocalFlywheelIO(StoreData(store), jobs, routes, "nats://unused"),
        PoolFacts.of(SpecialistPoolSpec.model_validate(pool["spec"])),
        pool_name=pool["metadata"]["name"],
    )
    for name, spec in specs.items():
        manifest = {"apiVersion": "protege.dev/v1alpha1", "kind": "Specialist", "metadata": {"name": name}}
        (tmp_path / "flywheel" / "specialists" / f"{name}.yaml").write_text(
            yaml.safe_dump(manifest | {"spec": spec})
        )
    local = {name: summary(status.to_kube()) for name, status in (await driver.step()).statuses.items()}
    assert routes.read().for_specialist("sql-writer") is not None

    resource = "protege.dev/v1alpha1/specialists"
    async with KubeRayDouble(kmock, crds=kuberay_crds):
        async with operator_running() as runner:
            kmock.objects["protege.dev/v1alpha1/specialistpools", "agents", "smollm2-pool"] = pool
            for uid, (name, spec) in enumerate(specs.items()):
                kmock.objects[resource, "agents", name] = specialist_body(base, name, f"s-{uid}", **spec)
            phases = {"bad-rank": "Failed", "orphan": "Pending", "sql-writer": "CollectingData"}
            await until(
                lambda: all(specialist_status(kmock, n).get("phase") == p for n, p in phases.items()),
                what=lambda: str({n: specialist_status(kmock, n).get("phase") for n in phases}),
            )
            await until(lambda: "sql-writer" in routes_of(kmock))
            cluster = {name: summary(specialist_status(kmock, name)) for name in specs}

            await delete(kmock, "/apis/protege.dev/v1alpha1/namespaces/agents/specialists/sql-writer")
            await until(lambda: stored(kmock, resource, "sql-writer") is None, seconds=60)
            assert "sql-writer" not in routes_of(kmock)
            assert len(store.versions("adapter", "sql-writer")) == 1  # retained
        assert runner.exception is None

    assert local == cluster
    assert local["bad-rank"][0] == "Failed" and ("Stalled", "True", "InvalidSpec") in local["bad-rank"][1]
    assert ("Reconciling", "True", "PoolNotFound") in local["orphan"][1]

    (tmp_path / "flywheel" / "specialists" / "sql-writer.yaml").unlink()  # deleted, locally
    assert (await driver.step()).removed == ["sql-writer"]
    assert routes.read().for_specialist("sql-writer") is None
    assert not (tmp_path / "flywheel" / "status" / "sql-writer.json").exists()
    assert len(store.versions("adapter", "sql-writer")) == 1  # retained, locally too
