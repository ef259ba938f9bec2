"""Pod template overrides: what a platform team sets on the pods the operator has KubeRay and
Kubernetes create (pull secrets, service account, priority, annotations, labels).

Three kinds of pods: a pool's ``gateway`` (its Deployment), its ``serving`` Ray cluster (the
RayService's head and workers) and its Specialists' ``training`` Ray clusters (the RayJobs'
head and workers). Overrides come from the platform (the operator's settings, for every pool)
and from a pool's ``spec.podTemplate``; :meth:`PodTemplates.over` lays the pool's over the platform's.
Labels may not set the keys that the operator, its Services and KubeRay select pods by.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from protege.api.meta import KubeModel

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DnsSubdomain = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253)]
# A label's value: at most 63 characters, alphanumeric at both ends (empty is a value too).
LabelValue = Annotated[
    str, StringConstraints(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)
]
_QUALIFIED_NAME = re.compile(
    r"^(([a-z0-9]([-a-z0-9.]*[a-z0-9])?)/)?([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$"
)

# Pod labels the operator (gateway Deployment, Service and PodDisruptionBudget selectors) and
# KubeRay (its head and serve Services select app.kubernetes.io/name and created-by; it lets a
# template's labels replace them) rely on.
RESERVED_LABEL_PREFIXES = ("protege.dev/", "ray.io/")
RESERVED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/created-by",
)
RESERVED_RULE = (
    "podTemplate labels may not set the labels pods are selected by: protege.dev/*, ray.io/* and "
    "app.kubernetes.io/name, component, managed-by and created-by; use other keys "
    "(e.g. app.kubernetes.io/part-of, team, cost-center)"
)
MAX_ENTRIES = 64  # labels or annotations per override (bounds the CEL rule's cost on the API server)


def is_reserved_label(key: str) -> bool:
    return key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABELS


def _check_keys(keys: list[str], what: str) -> None:
    for key in keys:
        match = _QUALIFIED_NAME.match(key)
        if match is None or len(match[4]) > 63 or len(match[2] or "") > 253:
            raise ValueError(
                f"{what} key {key!r} is not a qualified name: an optional DNS-subdomain prefix and '/', "
                "then at most 63 letters, digits, '-', '_' or '.' starting and ending with a letter or digit"
            )


class LocalObjectReference(KubeModel):
    """A corev1.LocalObjectReference: an object of the pod's namespace, by name."""

    name: DnsSubdomain = Field(description="Name of the object (a Secret of type docker-registry).")


class PodOverrides(KubeModel):
    """What is set on one kind of pod; unset fields keep what the operator renders."""

    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets (in the pool's namespace) to pull the images with, as in a pod spec: "
        "[{name: regcred}]; added to the platform's.",
    )
    service_account_name: DnsSubdomain | None = Field(
        default=None,
        description="ServiceAccount the pods run as, e.g. one with a workload identity for the artifact "
        "store (IRSA, GKE Workload Identity); the platform's, else the namespace's default, when unset.",
    )
    priority_class_name: DnsSubdomain | None = Field(
        default=None, description="PriorityClass of the pods; the platform's, else none, when unset."
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_ENTRIES,
        description="Annotations on the pods, over the platform's and the operator's.",
    )
    labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_ENTRIES,
        description="Labels on the pods, over the platform's. Not the keys pods are selected by: "
        "protege.dev/*, ray.io/*, app.kubernetes.io/name, component, managed-by, created-by.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, !("
                    + " || ".join(f"k.startsWith('{p}')" for p in RESERVED_LABEL_PREFIXES)
                    + " || k in ["
                    + ", ".join(f"'{k}'" for k in RESERVED_LABELS)
                    + "]))",
                    "message": RESERVED_RULE,
                }
            ]
        },
    )

    @field_validator("annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str]) -> dict[str, str]:
        _check_keys(list(value), "annotation")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        _check_keys(list(value), "label")
        reserved = sorted(k for k in value if is_reserved_label(k))
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: {RESERVED_RULE}")
        return value

    def over(self, base: PodOverrides) -> PodOverrides:
        """These overrides laid over ``base``: names set here win, maps merge key by key (these win),
        pull secrets add up (``base``'s first)."""
        secrets = list(base.image_pull_secrets)
        secrets += [s for s in self.image_pull_secrets if s not in secrets]
        return PodOverrides(
            image_pull_secrets=secrets,
            service_account_name=self.service_account_name or base.service_account_name,
            priority_class_name=self.priority_class_name or base.priority_class_name,
            annotations=base.annotations | self.annotations,
            labels=base.labels | self.labels,
        )


class PodTemplates(KubeModel):
    """Overrides per kind of pod."""

    gateway: PodOverrides = Field(
        default_factory=PodOverrides, description="The gateway's pods (its Deployment)."
    )
    serving: PodOverrides = Field(
        default_factory=PodOverrides,
        description="The serving Ray cluster's head and worker pods (RayService).",
    )
    training: PodOverrides = Field(
        default_factory=PodOverrides,
        description="The training Ray clusters' head and worker pods (the Specialists' RayJobs).",
    )

    def over(self, base: PodTemplates) -> PodTemplates:
        return PodTemplates(
            gateway=self.gateway.over(base.gateway),
            serving=self.serving.over(base.serving),
            training=self.training.over(base.training),
        )
