"""Kubernetes RBAC as the API server's authorizer evaluates it (for the kube API emulator).

:class:`Rbac` holds what one ServiceAccount may do, read from ClusterRoles, Roles and their
bindings (a chart's render): the rules of ClusterRoles bound by ClusterRoleBindings apply in every
namespace and at the cluster scope; those bound by a RoleBinding (a Role, or a ClusterRole) only in
the binding's namespace. Rules are additive, ``*`` matches anything, ``resourceNames`` narrows a
rule to named objects (never a list, a watch or a create). A request is a verb (``get``, ``list``,
``watch``, ``create``, ``patch``, ``update``, ``delete``) on ``resource[/subresource]`` of an API
group, in a namespace or at the cluster scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    resource_names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(
            frozenset(rule.get("apiGroups") or ()),
            frozenset(rule.get("resources") or ()),
            frozenset(rule.get("verbs") or ()),
            frozenset(rule.get("resourceNames") or ()),
        )

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        if self.resource_names and (name is None or name not in self.resource_names):
            return False
        plural, _, subresource = resource.partition("/")
        named = {"*", resource} | ({f"{plural}/*"} if subresource else set())  # pods/* is every subresource
        return (
            bool({"*", verb} & self.verbs)
            and bool({"*", group} & self.api_groups)
            and bool(named & self.resources)
        )


@dataclass(frozen=True)
class Rbac:
    """What ``user`` (``system:serviceaccount:<namespace>:<name>``) may do."""

    user: str
    cluster_rules: tuple[Rule, ...] = ()
    namespace_rules: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def for_service_account(cls, objects: Iterable[Mapping[str, Any]], namespace: str, name: str) -> Rbac:
        objects = list(objects)
        roles = {
            (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]): [
                Rule.parse(rule) for rule in obj.get("rules") or ()
            ]
            for obj in objects
            if obj.get("kind") in ("ClusterRole", "Role")
        }
        cluster: list[Rule] = []
        per_namespace: dict[str, list[Rule]] = {}
        for obj in objects:
            if obj.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
                continue
            subjects = obj.get("subjects") or ()
            if not any(
                s.get("kind") == "ServiceAccount"
                and s.get("name") == name
                and s.get("namespace") == namespace
                for s in subjects
            ):
                continue
            ref = obj["roleRef"]
            where = obj["metadata"].get("namespace")
            role_namespace = where if ref["kind"] == "Role" else None
            rules = roles.get((ref["kind"], role_namespace, ref["name"]), [])  # a missing role grants nothing
            if obj["kind"] == "ClusterRoleBinding":
                cluster += rules
            else:
                per_namespace.setdefault(where, []).extend(rules)
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            tuple(cluster),
            {ns: tuple(rules) for ns, rules in per_namespace.items()},
        )

    def allows(
        self, verb: str, group: str, resource: str, namespace: str | None, name: str | None = None
    ) -> bool:
        rules = list(self.cluster_rules)
        if namespace is not None:
            rules += self.namespace_rules.get(namespace, ())
        return any(rule.allows(verb, group, resource, name) for rule in rules)

    def refusal(self, verb: str, group: str, resource: str, namespace: str | None) -> str:
        """The API server's 403 message."""
        plural, _, sub = resource.partition("/")
        what = f"{plural}.{group}" if group else plural
        scope = f'in the namespace "{namespace}"' if namespace is not None else "at the cluster scope"
        subresource = f' subresource "{sub}"' if sub else ""
        return (
            f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{plural}"{subresource} '
            f'in API group "{group}" {scope}'
        )
