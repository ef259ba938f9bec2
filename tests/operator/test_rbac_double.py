"""The RBAC double (protege.testing.rbac) against the chart's own RBAC in both modes, and the emulator
refusing what it does not allow with the API server's 403."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from protege.operator.settings import RELEASE_NAMESPACE, operator_pod, render_chart
from protege.testing.kube_api import KubeApiEmulator
from protege.testing.plugin import register_kmock_resources
from protege.testing.rbac import Rbac, Rule


def operator_rbac(values: dict[str, Any]) -> Rbac:
    objects = render_chart(values)
    return Rbac.for_service_account(objects, RELEASE_NAMESPACE, operator_pod(objects)["serviceAccountName"])


def test_named_namespaces_grant_workloads_there_and_nothing_cluster_wide() -> None:
    rbac = operator_rbac({"operator": {"watchNamespaces": ["agents", "team-b"]}})
    for namespace in ("agents", "team-b"):
        assert rbac.allows("list", "protege.dev", "specialistpools", namespace)
        assert rbac.allows("create", "ray.io", "rayjobs", namespace)
        assert rbac.allows("patch", "protege.dev", "specialists/status", namespace)
    assert not rbac.allows("list", "protege.dev", "specialistpools", None)  # the cluster scope
    assert not rbac.allows("list", "protege.dev", "specialistpools", "kube-system")
    assert not rbac.allows("create", "ray.io", "rayjobs", "kube-system")
    assert not rbac.allows("get", "", "secrets", "agents")  # never granted, in any mode
    # kopf's cluster-scoped reads in this mode: CRDs, and the namespaces it matches its patterns to
    assert rbac.allows("watch", "apiextensions.k8s.io", "customresourcedefinitions", None)
    assert rbac.allows("list", "", "namespaces", None)
    assert rbac.refusal("list", "protege.dev", "specialistpools", None) == (
        "specialistpools.protege.dev is forbidden: "
        'User "system:serviceaccount:protege-system:protege-operator" cannot list resource '
        '"specialistpools" in API group "protege.dev" at the cluster scope'
    )


def test_all_namespaces_grant_the_same_rules_everywhere_and_no_namespace_list() -> None:
    rbac = operator_rbac({})
    for namespace in (None, "agents", "anywhere"):
        assert rbac.allows("watch", "protege.dev", "specialists", namespace)
        assert not rbac.allows("delete", "ray.io", "rayservices", namespace)  # applied, never deleted
    assert not rbac.allows("list", "", "namespaces", None)  # kopf lists them only with --namespace


def test_rules_follow_kubernetes_matching() -> None:
    status_only = Rule.parse(
        {"apiGroups": ["protege.dev"], "resources": ["specialists/*"], "verbs": ["patch"]}
    )
    assert status_only.allows("patch", "protege.dev", "specialists/status", None)
    assert not status_only.allows("patch", "protege.dev", "specialists", None)  # a subresource rule only
    named = Rule.parse(
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["a"]}
    )
    assert named.allows("get", "", "configmaps", "a")
    assert not named.allows("get", "", "configmaps", "b") and not named.allows("get", "", "configmaps", None)
    anything = Rule.parse({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})
    assert anything.allows("delete", "ray.io", "rayjobs", None)


@pytest.mark.kmock(cls=KubeApiEmulator)
async def test_the_emulator_refuses_the_operators_requests_its_rbac_does_not_allow(kmock: Any) -> None:
    register_kmock_resources(kmock)
    kmock.rbac = operator_rbac({"operator": {"watchNamespaces": ["agents"]}})
    pools = f"{str(kmock.url).rstrip('/')}/apis/protege.dev/v1alpha1"
    async with aiohttp.ClientSession(headers={"User-Agent": "kopf/1.38"}) as session:
        async with session.get(f"{pools}/namespaces/agents/specialistpools") as response:
            assert response.status == 200
        async with session.get(f"{pools}/specialistpools") as response:
            body = await response.json()
            assert (response.status, body["reason"]) == (403, "Forbidden")
            assert "cannot list resource" in body["message"] and "at the cluster scope" in body["message"]
    async with (
        aiohttp.ClientSession() as session,  # a client the RBAC is not about (the test, KubeRay)
        session.get(f"{pools}/specialistpools") as response,
    ):
        assert response.status == 200
    assert kmock.forbidden == [body["message"]]
