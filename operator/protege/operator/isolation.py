"""A pool's NetworkPolicies: who may reach its Ray pods and its gateway (pure, like the renderers).

With the chart's ``networkPolicies.enabled`` the operator creates three ingress policies next to
each pool (``PROTEGE_OPERATOR_NETWORK_POLICIES``: the peers below, as JSON; unset: none):

- ``<pool>-serve`` selects the pool's serving Ray pods (:func:`protege.operator.ray_service.ray_pod_labels`):
  the pool's own Ray pods reach them on every port (GCS, raylets, object transfers); its gateways
  reach Serve's port (8000) and nothing else; the KubeRay operator reaches the dashboard (8265:
  it deploys the Serve application and reads its status through the dashboard's API) and Serve's
  port (it checks the head's proxy at ``/-/healthz``); Prometheus reaches Ray's metrics port
  (8080). Nothing else reaches the dashboard, whose API submits jobs and deploys code.
- ``<pool>-gateway`` selects the pool's gateway pods: the API (8080) from anywhere (agents, with
  their API keys), the metrics port (9090, every tenant's figures) from Prometheus only.
- ``<pool>-training`` selects the training Ray pods of the pool's Specialists (their RayJobs'
  heads and workers, :func:`protege.operator.training_jobs.training_pod_labels`): they reach each other
  on every port (Ray's GCS, raylets, object transfers, Ray Train's collectives); the RayJobs'
  submitter pods (:func:`~protege.operator.training_jobs.training_submitter_labels`) and the KubeRay
  operator (it reads the job's status from the dashboard) reach the dashboard (8265), Prometheus
  Ray's metrics port (8080); nothing else reaches them (no gateway, no agent: training serves
  nothing).

Egress is not restricted (engines and gateways reach the artifact store, the teacher, NATS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protege.api.naming import child_name
from protege.operator.gateway import GATEWAY_METRICS_PORT, GATEWAY_PORT, gateway_name, gateway_selector
from protege.operator.platform import Owner, child_metadata, plain
from protege.operator.ray_pods import SERVE_PORT
from protege.operator.ray_service import ray_pod_labels, ray_service_name
from protege.operator.training_jobs import training_pod_labels, training_submitter_labels

NETWORK_POLICIES_VARIABLE = "PROTEGE_OPERATOR_NETWORK_POLICIES"
RAY_DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080  # KubeRay's default metrics-export-port
PEER_FIELDS = {"namespaceSelector", "podSelector", "ipBlock"}


def _peers(value: Any, key: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not all(
        isinstance(peer, dict) and peer and set(peer) <= PEER_FIELDS for peer in value
    ):
        raise ValueError(
            f"{NETWORK_POLICIES_VARIABLE}: {key} must be a list of NetworkPolicy peers (each with "
            f"namespaceSelector, podSelector or ipBlock); got {value!r}"
        )
    return tuple(value)


def _port(number: int) -> dict[str, Any]:
    return {"port": number, "protocol": "TCP"}


@dataclass(frozen=True)
class NetworkIsolation:
    """Who may reach a pool's pods besides the pool itself: NetworkPolicy peers (``from`` entries)."""

    kuberay: tuple[dict[str, Any], ...] = field(default=())  # the KubeRay operator's pods
    prometheus: tuple[dict[str, Any], ...] = field(default=())  # whoever scrapes metrics

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> NetworkIsolation | None:
        """The chart's ``networkPolicies`` (JSON ``{"kuberay": [...], "prometheus": [...]}``); None: off."""
        text = (os.environ if environ is None else environ).get(NETWORK_POLICIES_VARIABLE, "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict) or not set(value) <= {"kuberay", "prometheus"}:
            raise ValueError(
                f"{NETWORK_POLICIES_VARIABLE} must be a JSON object with the lists of peers kuberay and "
                f"prometheus; got {text!r}"
            )
        return cls(
            kuberay=_peers(value.get("kuberay", []), "kuberay"),
            prometheus=_peers(value.get("prometheus", []), "prometheus"),
        )


def training_policy_name(pool: str) -> str:
    """``<pool>-training``."""
    return child_name(pool, "training")


def render_network_policies(owner: Owner, isolation: NetworkIsolation) -> list[dict[str, Any]]:
    """The pool's ``<pool>-serve``, ``<pool>-gateway`` and ``<pool>-training`` NetworkPolicies
    (ingress only)."""
    serving = ray_pod_labels(owner.name)
    gateways = gateway_selector(owner)
    serve_rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": serving}}]},  # Ray within the pool: every port
        {"from": [{"podSelector": {"matchLabels": gateways}}], "ports": [_port(SERVE_PORT)]},
    ]
    if isolation.kuberay:
        ports = [_port(RAY_DASHBOARD_PORT), _port(SERVE_PORT)]
        serve_rules.append({"from": list(isolation.kuberay), "ports": ports})
    gateway_rules: list[dict[str, Any]] = [{"ports": [_port(GATEWAY_PORT)]}]  # the API, from anywhere
    training = training_pod_labels(owner.name)
    submitters = {"podSelector": {"matchLabels": training_submitter_labels(owner.name)}}
    training_rules: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": training}}]},  # Ray within the cluster: every port
        {"from": [submitters, *isolation.kuberay], "ports": [_port(RAY_DASHBOARD_PORT)]},
    ]
    if isolation.prometheus:
        serve_rules.append({"from": list(isolation.prometheus), "ports": [_port(RAY_METRICS_PORT)]})
        gateway_rules.append({"from": list(isolation.prometheus), "ports": [_port(GATEWAY_METRICS_PORT)]})
        training_rules.append({"from": list(isolation.prometheus), "ports": [_port(RAY_METRICS_PORT)]})
    return [
        _policy(ray_service_name(owner.name), owner, serving, serve_rules),
        _policy(gateway_name(owner.name), owner, gateways, gateway_rules),
        _policy(training_policy_name(owner.name), owner, training, training_rules),
    ]


def _policy(name: str, owner: Owner, selected: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return plain(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": child_metadata(name, owner, "network-policy"),
            "spec": {"podSelector": {"matchLabels": selected}, "policyTypes": ["Ingress"], "ingress": rules},
        }
    )
