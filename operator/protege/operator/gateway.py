"""A SpecialistPool's gateway: its ``Deployment`` and ``Service`` (capture, routing, the teacher as
fallback; the teacher key, the gateway's NATS password and the pool token by secret reference),
its ``HorizontalPodAutoscaler`` and its ``PodDisruptionBudget``."""

from __future__ import annotations

from typing import Any

from protege.api.naming import child_name
from protege.api.pool import SpecialistPoolSpec
from protege.config import gateway_settings, setting_variable
from protege.operator.platform import (
    API_GROUP,
    Owner,
    Platform,
    SecretEnv,
    child_metadata,
    container_env,
    plain,
    pool_token_secret,
    store_settings,
)
from protege.operator.ray_pods import SERVE_PORT, pod_templates, with_overrides
from protege.operator.ray_service import ray_service_name
from protege.operator.routing import ROUTES_TABLE, routes_volume

GATEWAY_PORT = 8080
GATEWAY_METRICS_PORT = 9090  # the gateway's /metrics, apart from its API (every tenant's figures)
# A stopping gateway pod: its preStop hook waits this long before SIGTERM, while the endpoints
# controller and kube-proxy (or the load balancer) stop sending it new calls.
GATEWAY_PRESTOP_SECONDS = 5
# After SIGTERM and the calls in flight (the pool's gateway.drainSeconds): the call log's flush to
# NATS (CallLogPublisher.close: 10 s at most, then the rest to the spool), and a margin to exit.
GATEWAY_FLUSH_SECONDS = 10 + 5

NATS_CA_DIR = "/etc/protege/nats-ca"


def _call_log_settings(platform: Platform) -> tuple[dict[str, Any], SecretEnv]:
    """A gateway's call log: where, as whom (identity ``gateway``), trusting what, with which limits."""
    auth = bool(platform.nats_auth_secret)
    settings = {
        "nats_url": platform.nats_url,
        "nats_auth": {
            "user": "gateway" if auth else None,
            "tls_ca_file": f"{NATS_CA_DIR}/ca.crt" if platform.nats_tls_ca_secret else None,
        },
        "call_log": {
            "max_age_days": platform.call_log_max_age_days or None,
            "max_bytes": platform.call_log_max_bytes or None,
            "replicas": platform.call_log_replicas or None,
        },
    }
    secrets: SecretEnv = {}
    if platform.nats_auth_secret:
        secrets[setting_variable("nats_auth", "password")] = (platform.nats_auth_secret, "gateway")
    return settings, secrets


def _scrape_annotations(port: int) -> dict[str, str]:
    """The prometheus.io annotations that annotation-based Prometheus configurations scrape pods by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def gateway_name(pool: str) -> str:
    """``<pool>-gateway``: the name of its Deployment, Service, autoscaler and disruption budget."""
    return child_name(pool, "gateway")


def gateway_selector(owner: Owner) -> dict[str, str]:
    """The labels that select a pool's gateway pods (Deployment, Service, disruption budget)."""
    return {
        "app.kubernetes.io/name": "protege",
        "app.kubernetes.io/component": "gateway",
        f"{API_GROUP}/pool": owner.name,
    }


def gateway_environment(
    owner: Owner, spec: SpecialistPoolSpec, platform: Platform
) -> tuple[dict[str, Any], SecretEnv]:
    """The pool's gateway's settings (:func:`protege.config.gateway_settings`, as `protege up`
    configures its gateway), and the variables its Secrets hold."""
    teacher = spec.teacher
    call_log, call_log_secrets = _call_log_settings(platform)
    store, store_secrets = store_settings(platform)
    settings = gateway_settings(
        teacher={"url": str(teacher.url), "model": teacher.model, "timeout_seconds": teacher.timeout_seconds},
        engine_url=f"http://{ray_service_name(owner.name)}-serve-svc.{owner.namespace}.svc:{SERVE_PORT}",
        routes_table=ROUTES_TABLE,
        api_keys_file="/etc/protege/keys/keys.yaml",
        gateway={
            "host": "0.0.0.0",
            "port": GATEWAY_PORT,
            "metrics_port": GATEWAY_METRICS_PORT,
            "drain_seconds": spec.gateway.drain_seconds,
        },
        home="/var/lib/protege",  # the call-log spool
        **call_log,
        **store,
    )
    secrets = {**call_log_secrets, **store_secrets, **pool_token_secret(platform)}
    if teacher.api_key_secret_ref is not None:
        ref = teacher.api_key_secret_ref
        secrets[setting_variable("teacher", "api_key")] = (ref.name, ref.key)
    return settings, secrets


def render_gateway(owner: Owner, spec: SpecialistPoolSpec, platform: Platform) -> list[dict[str, Any]]:
    """The pool's gateway Deployment and Service: capture, routing, the teacher as fallback.

    The Deployment sets no ``replicas``: its autoscaler (:func:`render_gateway_autoscaler`) owns
    the count, and an applied count would reset it on every reconcile. A stopping pod gets
    ``GATEWAY_PRESTOP_SECONDS`` for the endpoints to forget it, then SIGTERM: the calls in flight
    get ``gateway.drainSeconds``, then the call log is flushed to NATS (docs/kubernetes.md).
    """
    name = gateway_name(owner.name)
    env = container_env(*gateway_environment(owner, spec, platform))
    routes, routes_mount = routes_volume(owner.name)
    labels = gateway_selector(owner)
    container: dict[str, Any] = {
        "name": "gateway",
        "image": platform.gateway_image,
        "args": ["gateway"],
        "env": env,
        "ports": [
            {"containerPort": GATEWAY_PORT, "name": "http"},
            {"containerPort": GATEWAY_METRICS_PORT, "name": "metrics"},  # scraped, not in the Service
        ],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        # new calls stop coming before SIGTERM stops the listener (python:slim has sleep)
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(GATEWAY_PRESTOP_SECONDS)]}}},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "keys", "mountPath": "/etc/protege/keys", "readOnly": True},
            routes_mount,
            {"name": "spool", "mountPath": "/var/lib/protege"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "keys", "secret": {"secretName": f"{owner.name}-gateway-keys"}},
        routes,
        {"name": "spool", "emptyDir": {}},
    ]
    if platform.nats_tls_ca_secret:
        container["volumeMounts"].append({"name": "nats-ca", "mountPath": NATS_CA_DIR, "readOnly": True})
        volumes.append({"name": "nats-ca", "secret": {"secretName": platform.nats_tls_ca_secret}})
    template = {
        "metadata": {"labels": labels, "annotations": _scrape_annotations(GATEWAY_METRICS_PORT)},
        "spec": {
            # the preStop wait, the calls in flight, the call log's flush: then SIGKILL
            "terminationGracePeriodSeconds": GATEWAY_PRESTOP_SECONDS
            + spec.gateway.drain_seconds
            + GATEWAY_FLUSH_SECONDS,
            "containers": [container],
            "volumes": volumes,
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(name, owner, "gateway"),
        "spec": {
            "selector": {"matchLabels": labels},
            "template": with_overrides(template, pod_templates(spec, platform).gateway),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(name, owner, "gateway"),
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [plain(deployment), plain(service)]


def render_gateway_autoscaler(owner: Owner, spec: SpecialistPoolSpec) -> dict[str, Any]:
    """The gateway's HorizontalPodAutoscaler: CPU utilisation between gateway.replicas.min and max.

    It exists for every pool (min equal to max pins the count): the HPA controller keeps the
    count within the bounds even where no metrics server answers, and the Deployment never sets
    one, so nothing else writes it.
    """
    gateway = spec.gateway
    target = {"type": "Utilization", "averageUtilization": gateway.target_cpu_utilization}
    return plain(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": child_metadata(gateway_name(owner.name), owner, "gateway"),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": gateway_name(owner.name),
                },
                "minReplicas": gateway.replicas.min,
                "maxReplicas": gateway.replicas.max,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
            },
        }
    )


def render_gateway_disruption_budget(owner: Owner) -> dict[str, Any]:
    """The gateway's PodDisruptionBudget: evictions (node drains) take one gateway pod at a time.

    ``maxUnavailable: 1`` rather than a ``minAvailable``: with one replica, ``minAvailable: 1``
    would refuse every eviction and block node drains for good; with ``maxUnavailable: 1`` the
    single pod may go (drained as on SIGTERM, the Deployment makes a new one elsewhere), and with
    two or more the others keep serving. Pods that are not ready may always be evicted
    (``unhealthyPodEvictionPolicy: AlwaysAllow``): a crash-looping gateway never blocks a drain.
    """
    return plain(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": child_metadata(gateway_name(owner.name), owner, "gateway"),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": gateway_selector(owner)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )
