"""A small async client for the objects the operator owns: server-side apply, read, patch.

Only the handful of kinds the operator renders, by their REST paths; no discovery. The
connection is the operator's own: ``PROTEGE_OPERATOR_API_SERVER`` (plain HTTP, for tests
against kmock and local development), else the in-cluster service account, else the
kubeconfig (through the ``kubernetes`` package's loaders). Each call is checked against the
operator's declared API uses (:mod:`protege.operator.api_access`, which its RBAC grants) and sent
as ``protege-operator/<version>``.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from protege.operator.api_access import check_client_call
from protege.version import __version__

# the operator's field manager on every server-side apply (``metadata.managedFields``)
FIELD_MANAGER = "protege-operator"
APPLY_PATCH = "application/apply-patch+yaml"

PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("ray.io/v1", "RayService"): "rayservices",
    ("ray.io/v1", "RayJob"): "rayjobs",
    ("protege.dev/v1alpha1", "SpecialistPool"): "specialistpools",
    ("protege.dev/v1alpha1", "Specialist"): "specialists",
}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{PLURALS[(api_version, kind)]}"
    return f"{path}/{name}" if name else path


def _declared(verb: str, api_version: str, kind: str) -> None:
    check_client_call(verb, api_version, PLURALS[(api_version, kind)])


class ConflictError(Exception):
    """409 Conflict: the object changed since the ``resourceVersion`` the write carried."""


@dataclass
class Connection:
    server: str
    headers: dict[str, str]
    ssl_context: ssl.SSLContext | None

    @classmethod
    def from_environment(cls) -> Connection:
        server = os.environ.get("PROTEGE_OPERATOR_API_SERVER")
        if server:
            return cls(server.rstrip("/"), {}, None)
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        configuration = client.Configuration.get_default_copy()
        headers = {}
        token = (configuration.api_key or {}).get("authorization")
        if token:
            headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        return cls(configuration.host.rstrip("/"), headers, context)


class KubeClient:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.connection.ssl_context or False)
            headers = {"User-Agent": f"protege-operator/{__version__}", **self.connection.headers}
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        return self._session

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        _declared("get", api_version, kind)
        url = self.connection.server + object_path(api_version, kind, namespace, name)
        async with self.session.get(url) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            found: dict[str, Any] = await response.json()
            return found

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[dict[str, Any]]:
        _declared("list", api_version, kind)
        url = self.connection.server + object_path(api_version, kind, namespace)
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        async with self.session.get(url, params={"labelSelector": selector}) as response:
            response.raise_for_status()
            found: list[dict[str, Any]] = (await response.json()).get("items") or []
        # the selector is applied here too: not every API server (emulators) filters
        return [o for o in found if labels.items() <= (o.get("metadata", {}).get("labels") or {}).items()]

    async def create(self, manifest: dict[str, Any]) -> bool:
        """Create the object unless it exists (then leave it as it is); whether it was created."""
        _declared("create", manifest["apiVersion"], manifest["kind"])
        meta = manifest["metadata"]
        url = self.connection.server + object_path(
            manifest["apiVersion"], manifest["kind"], meta["namespace"]
        )
        async with self.session.post(url, json=manifest) as response:
            if response.status == 409:
                return False
            response.raise_for_status()
            return True

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: the whole manifest as the operator's intent (field manager
        :data:`FIELD_MANAGER`, ``force``: the operator owns what it renders, so another manager's
        change of those fields is taken back); creates the object when it is missing. Every child
        the operator renders is written through here."""
        meta = manifest["metadata"]
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        for verb in ("create", "patch"):  # before anything is sent: apply creates or patches
            _declared(verb, api_version, kind)
        url = self.connection.server + object_path(api_version, kind, meta["namespace"], meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true"}
        headers = {"Content-Type": APPLY_PATCH}  # JSON is YAML
        async with self.session.patch(
            url, data=json.dumps(manifest), params=params, headers=headers
        ) as response:
            response.raise_for_status()
            applied: dict[str, Any] = await response.json()
            return applied

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A merge patch; a ``metadata.resourceVersion`` in it is a precondition: :class:`ConflictError`
        when the object changed since that version was read."""
        _declared("patch", api_version, kind)
        url = self.connection.server + object_path(api_version, kind, namespace, name)
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(url, json=patch, headers=headers) as response:
            if response.status == 409:
                raise ConflictError(f"{kind} {namespace}/{name} changed since it was read")
            response.raise_for_status()
            patched: dict[str, Any] = await response.json()
            return patched

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); whether it was there."""
        _declared("delete", api_version, kind)
        url = self.connection.server + object_path(api_version, kind, namespace, name)
        async with self.session.delete(url, json={"propagationPolicy": "Background"}) as response:
            if response.status == 404:
                return False
            response.raise_for_status()
            return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
