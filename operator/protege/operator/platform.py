"""What every renderer shares: the operator's installation (:class:`Platform`), the owner of
its children (:class:`Owner`), their metadata, and the environment variables containers get.

The renderers are pure (no API calls): handlers only adopt, apply and patch status, and
`protege render` prints the same manifests for review in GitOps pull requests. Names are
deterministic, so a restarted operator finds what it created instead of creating it again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from protege.api.pods import PodTemplates
from protege.config import as_environment, setting_variable
from protege.version import __version__

API_GROUP = "protege.dev"
ENVIRONMENT_PREFIX = "PROTEGE_OPERATOR_"  # the operator's settings, as the chart sets them


@dataclass(frozen=True)
class Platform:
    """What the operator knows of its installation (its Helm values, through its settings)."""

    serving_image: str = f"ghcr.io/protege-dev/protege-serving:{__version__}"
    training_image: str = f"ghcr.io/protege-dev/protege-training:{__version__}"
    gateway_image: str = f"ghcr.io/protege-dev/protege-gateway:{__version__}"
    artifact_store: str = "s3://protege/artifacts"
    s3_endpoint: str | None = None
    s3_secret: str | None = "protege-s3"  # a Secret with keys accessKeyId and secretAccessKey
    nats_url: str = "nats://protege-nats:4222"
    # A Secret whose key ``gateway`` is the gateways' NATS password (identity ``gateway``); empty:
    # a NATS without authentication. It must exist in every namespace with pools.
    nats_auth_secret: str | None = "protege-nats-auth"
    # A Secret with ``ca.crt``, the CA that NATS's TLS certificate is checked against (tls://
    # URLs); empty: the system's CAs.
    nats_tls_ca_secret: str | None = None
    # A Secret whose key ``token`` gateways send to the pools' engines, which refuse calls
    # without it. It must exist in every namespace with pools.
    pool_token_secret: str = "protege-pool-token"
    # The call-log stream's limits, for the gateways that create it (unset: the settings' defaults).
    call_log_max_age_days: str | None = None
    call_log_max_bytes: str | None = None
    call_log_replicas: str | None = None
    # What to set on every pool's pods, as JSON: {"gateway": {...}, "serving": {...}, "training": {...}}
    # with the fields of a pool's spec.podTemplate (protege.api.pods.PodTemplates); a pool's own
    # podTemplate is laid over it. Checked when the operator starts.
    pod_template: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Platform:
        """The fields the chart sets, each from ``PROTEGE_OPERATOR_<FIELD>``; the others their defaults."""
        return cls(
            **{
                field: environ[f"{ENVIRONMENT_PREFIX}{field.upper()}"]
                for field in cls.__dataclass_fields__
                if f"{ENVIRONMENT_PREFIX}{field.upper()}" in environ
            }
        )

    def __post_init__(self) -> None:
        self.pod_templates  # noqa: B018 - parsed now: a bad setting fails the operator's startup, saying why

    @cached_property
    def pod_templates(self) -> PodTemplates:
        if not self.pod_template:
            return PodTemplates()
        try:
            return PodTemplates.model_validate_json(self.pod_template)
        except ValueError as error:
            raise ValueError(
                f"PROTEGE_OPERATOR_POD_TEMPLATE (the chart's platform.podTemplate) is not valid: {error}"
            ) from None


@dataclass(frozen=True)
class Owner:
    """The custom resource children belong to (garbage collected with it)."""

    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/v1alpha1",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_metadata(name: str, owner: Owner, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {
            "app.kubernetes.io/name": "protege",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "protege-operator",
            f"{API_GROUP}/{owner.kind.lower()}": owner.name,
        },
        "ownerReferences": [owner.reference()],
    }


def plain(manifest: dict[str, Any]) -> dict[str, Any]:
    """A deep copy with no shared parts (YAML would print them as anchors and aliases)."""
    copy: dict[str, Any] = json.loads(json.dumps(manifest))
    return copy


# A variable whose value is a key of a Secret: variable → (Secret, key).
SecretEnv = dict[str, tuple[str, str]]


def container_env(settings: dict[str, Any], secrets: SecretEnv | None = None) -> list[dict[str, Any]]:
    """A container's env: the settings as their PROTEGE_* variables (:func:`protege.config.as_environment`,
    as `protege up` gives its processes theirs), then the variables whose values are Secret keys."""
    env: list[dict[str, Any]] = [{"name": n, "value": v} for n, v in as_environment(settings).items()]
    for name, (secret, key) in (secrets or {}).items():
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def store_settings(platform: Platform) -> tuple[dict[str, Any], SecretEnv]:
    """The artifact store, its S3 credentials from the platform's Secret."""
    settings = {
        "artifact_store": platform.artifact_store,
        "s3": {"endpoint_url": platform.s3_endpoint or None},
    }
    secrets: SecretEnv = {}
    if platform.s3_secret:
        for field, key in (("access_key_id", "accessKeyId"), ("secret_access_key", "secretAccessKey")):
            secrets[setting_variable("s3", field)] = (platform.s3_secret, key)
    return settings, secrets


def store_env(platform: Platform) -> list[dict[str, Any]]:
    return container_env(*store_settings(platform))


def pool_token_secret(platform: Platform) -> SecretEnv:
    return {setting_variable("pool_token"): (platform.pool_token_secret, "token")}


def pool_token_env(platform: Platform) -> dict[str, Any]:
    [env] = container_env({}, pool_token_secret(platform))
    return env
