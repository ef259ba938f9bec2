"""Every Kubernetes API call the operator makes, and why: the one table its RBAC follows.

Two clients call the API server from the operator's pod: kopf (it watches Specialists and
SpecialistPools, patches them and their status, posts Events, peers, and watches CRDs and
namespaces) and the operator's own :class:`protege.operator.kube.KubeClient` (the children).
The client refuses a call this table does not list (:func:`check_client_call`), so a new call
fails in the tests rather than with a 403 in a cluster; ``tests/chart/test_chart.py`` checks that
the chart's ClusterRole and Roles grant exactly :func:`required_rules`, no more, in every mode;
the kmock tests check every request the running operator sent against :func:`declares`.

Not listed: discovery (``/version``, ``/api``, ``/apis/...``), non-resource URLs that every
authenticated client may read (Kubernetes' default ``system:discovery`` ClusterRole).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

Rules = dict[tuple[str, str], frozenset[str]]  # (API group, resource) → verbs


class Mode(StrEnum):
    """What a use depends on: the chart's values that turn it on."""

    NAMESPACED = "namespaced"  # operator.watchNamespaces listed: kopf runs with --namespace
    ALL_NAMESPACES = "all-namespaces"  # operator.watchNamespaces empty: --all-namespaces
    PEERING = "peering"  # operator.replicas > 1: kopf peers
    NETWORK_POLICIES = "network-policies"  # networkPolicies.enabled: the pools' NetworkPolicies


class Caller(StrEnum):
    KOPF = "kopf"
    OPERATOR = "operator"  # KubeClient
    ADMISSION = "admission"  # what the API server checks on the operator's writes


@dataclass(frozen=True)
class ApiUse:
    group: str
    resource: str  # the plural, or plural/subresource
    verbs: frozenset[str]
    caller: Caller
    why: str
    cluster_scoped: bool = False
    needs: frozenset[Mode] = frozenset()  # every one of them must hold

    def applies(self, modes: frozenset[Mode]) -> bool:
        return self.needs <= modes


def _use(
    group: str,
    resource: str,
    verbs: str,
    caller: Caller,
    why: str,
    *,
    cluster_scoped: bool = False,
    needs: tuple[Mode, ...] = (),
) -> ApiUse:
    return ApiUse(group, resource, frozenset(verbs.split()), caller, why, cluster_scoped, frozenset(needs))


KOPF, OPERATOR, ADMISSION = Caller.KOPF, Caller.OPERATOR, Caller.ADMISSION
API_USES: tuple[ApiUse, ...] = (
    _use(
        "protege.dev",
        "specialists",
        "list watch patch",
        KOPF,
        "watches them; its finalizer and its handler progress (annotations) go on them by patch",
    ),
    _use(
        "protege.dev",
        "specialistpools",
        "list watch patch",
        KOPF,
        "watches them; its handler progress (annotations) goes on them by patch",
    ),
    _use("protege.dev", "specialistpools", "get", OPERATOR, "a Specialist's pool: its spec and uid"),
    _use(
        "protege.dev",
        "specialists/status",
        "patch",
        KOPF,
        "phase, conditions and versions, through the status subresource",
    ),
    _use("protege.dev", "specialistpools/status", "patch", KOPF, "phase, conditions, endpoint"),
    _use(
        "protege.dev",
        "specialists/finalizers",
        "update",
        ADMISSION,
        "children carry blockOwnerDeletion owner references, which OwnerReferencesPermissionEnforcement "
        "accepts only from a client that may update the owner's finalizers",
    ),
    _use("protege.dev", "specialistpools/finalizers", "update", ADMISSION, "the same, for a pool's children"),
    _use(
        "ray.io",
        "rayservices",
        "get create patch",
        OPERATOR,
        "a pool's RayService: server-side applied (creates or patches it); read for the pool's status",
    ),
    _use(
        "ray.io",
        "rayjobs",
        "get list create patch delete",
        OPERATOR,
        "training jobs: created, read for their state, listed by label (training slots, adoption), "
        "finished ones deleted once the Specialist's status no longer names them",
    ),
    _use(
        "",
        "configmaps",
        "get create patch",
        OPERATOR,
        "a pool's routing table: created empty, read, merge-patched over the resourceVersion read",
    ),
    _use("", "services", "create patch", OPERATOR, "a pool's gateway Service: server-side applied"),
    _use("apps", "deployments", "create patch", OPERATOR, "a pool's gateway Deployment: server-side applied"),
    _use(
        "autoscaling",
        "horizontalpodautoscalers",
        "create patch",
        OPERATOR,
        "a pool's gateway's autoscaler: server-side applied",
    ),
    _use(
        "policy",
        "poddisruptionbudgets",
        "create patch",
        OPERATOR,
        "a pool's gateway's disruption budget: server-side applied",
    ),
    _use(
        "networking.k8s.io",
        "networkpolicies",
        "create patch",
        OPERATOR,
        "a pool's NetworkPolicies, server-side applied: who reaches its Ray pods and its gateway's metrics",
        needs=(Mode.NETWORK_POLICIES,),
    ),
    _use(
        "",
        "events",
        "create",
        KOPF,
        "an Event for each transition (core v1 Events; kopf 1.45 posts no other)",
    ),
    _use(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "list watch",
        KOPF,
        "kopf watches CRDs to notice its resources appear, change or go away",
        cluster_scoped=True,
    ),
    _use(
        "",
        "namespaces",
        "list watch",
        KOPF,
        "with --namespace, kopf matches its patterns against the namespaces and follows their creation "
        "and deletion (kopf/_core/reactor/observation.py; not with --all-namespaces)",
        cluster_scoped=True,
        needs=(Mode.NAMESPACED,),
    ),
    _use(
        "kopf.dev",
        "clusterkopfpeerings",
        "list watch patch",
        KOPF,
        "peering across the cluster: each peer's keep-alive in the object",
        cluster_scoped=True,
        needs=(Mode.ALL_NAMESPACES, Mode.PEERING),
    ),
    _use(
        "kopf.dev",
        "kopfpeerings",
        "list watch patch",
        KOPF,
        "peering in each watched namespace",
        needs=(Mode.NAMESPACED, Mode.PEERING),
    ),
)


def modes(*, namespaced: bool, peering: bool, network_policies: bool) -> frozenset[Mode]:
    chosen = {Mode.NAMESPACED if namespaced else Mode.ALL_NAMESPACES}
    chosen |= {Mode.PEERING} if peering else set()
    chosen |= {Mode.NETWORK_POLICIES} if network_policies else set()
    return frozenset(chosen)


def _merge(uses: list[ApiUse]) -> Rules:
    rules: dict[tuple[str, str], frozenset[str]] = {}
    for use in uses:
        key = (use.group, use.resource)
        rules[key] = rules.get(key, frozenset()) | use.verbs
    return rules


def required_rules(*, namespaced: bool, peering: bool, network_policies: bool) -> tuple[Rules, Rules]:
    """(the ClusterRole's rules, each watched namespace's Role's rules) of an install.

    Watching all namespaces, the ClusterRole holds everything (namespaced resources are read
    across the cluster) and there are no Roles; watching listed namespaces, the ClusterRole
    holds only the cluster-scoped uses and each namespace's Role the rest.
    """
    chosen = modes(namespaced=namespaced, peering=peering, network_policies=network_policies)
    uses = [use for use in API_USES if use.applies(chosen)]
    if not namespaced:
        return _merge(uses), {}
    return _merge([u for u in uses if u.cluster_scoped]), _merge([u for u in uses if not u.cluster_scoped])


def declares(group: str, resource: str, verb: str, caller: Caller | None = None) -> bool:
    """Whether the table lists ``verb`` on ``group``/``resource`` (for ``caller``, when given)."""
    return any(
        use.group == group and use.resource == resource and verb in use.verbs
        for use in API_USES
        if caller is None or use.caller is caller
    )


class UndeclaredApiCall(RuntimeError):
    """The operator's client was asked for a call its RBAC does not grant."""


def check_client_call(verb: str, api_version: str, resource: str) -> None:
    """Refuse a KubeClient call the table does not list (the chart would not grant it)."""
    group = api_version.rpartition("/")[0]  # "" for the core group's "v1"
    if not declares(group, resource, verb, OPERATOR):
        raise UndeclaredApiCall(
            f"the operator may not {verb} {resource}.{group or 'core'}: list it in "
            "protege.operator.api_access.API_USES and in charts/protege/templates/rbac.yaml "
            "(tests/chart/test_chart.py checks they agree)"
        )
