"""Pure renderers: every object the operator creates, as a plain manifest (no API calls here).

Handlers only adopt, apply and patch status; `protege render` prints these same manifests
for review in GitOps pull requests. Names are deterministic, so a restarted operator
finds what it created instead of creating it again.

- a SpecialistPool → a KubeRay ``RayService`` running the pool's Serve application
  (:mod:`protege.serving.pool`), a ``ConfigMap`` with the pool's routing table, and the
  gateway ``Deployment`` + ``Service`` in front of it (teacher key, the gateway's NATS password
  and the pool token by secret reference), with its ``HorizontalPodAutoscaler`` and
  ``PodDisruptionBudget``;
- a Specialist's training run → a KubeRay ``RayJob`` running ``python -m
  protege.training.job`` on GPU workers, named after the hash of its job spec.

The workers of both load the base model: they mount the pool's model cache, a ``pvc://``
source's claim read-only, and get the hub token by secret reference (:class:`ModelAccess`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import yaml

from protege.api.jobs import JobSpec, job_name
from protege.api.meta import ComputeResources, Toleration, quantity_value
from protege.api.naming import KUBERAY_NAME_MAX, child_name
from protege.api.pods import PodOverrides, PodTemplates
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import RoutingTable
from protege.config import as_environment, gateway_settings, setting_variable
from protege.models.sources import HF_HOME_DIR, HF_TOKEN_VARIABLE, MODEL_CACHE_DIR, volume_source
from protege.serving.pool.config import serve_application
from protege.version import __version__

API_GROUP = "protege.dev"
RAY_VERSION = "2.60.0"
SERVE_PORT = 8000
GATEWAY_PORT = 8080
GATEWAY_METRICS_PORT = 9090  # the gateway's /metrics, apart from its API (every tenant's figures)
ROUTES_KEY = "routes.json"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINISHED_CLUSTER_TTL_SECONDS = 60  # a finished training job's Ray cluster (its GPUs) goes after this
# A stopping gateway pod: its preStop hook waits this long before SIGTERM, while the endpoints
# controller and kube-proxy (or the load balancer) stop sending it new calls.
GATEWAY_PRESTOP_SECONDS = 5
# After SIGTERM and the calls in flight (the pool's gateway.drainSeconds): the call log's flush to
# NATS (CallLogPublisher.close: 10 s at most), and a margin for the process to exit.
GATEWAY_FLUSH_SECONDS = 10 + 5
# What a serving or training container writes besides the model cache (Ray's logs and spilled
# objects, vLLM's compile cache, adapters, a job's checkpoints): requested as ephemeral storage.
WORKING_SPACE = "10Gi"


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


def _metadata(name: str, owner: Owner, component: str) -> dict[str, Any]:
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


def _plain(manifest: dict[str, Any]) -> dict[str, Any]:
    """A deep copy with no shared parts (YAML would print them as anchors and aliases)."""
    copy: dict[str, Any] = json.loads(json.dumps(manifest))
    return copy


# A variable whose value is a key of a Secret: variable → (Secret, key).
SecretEnv = dict[str, tuple[str, str]]


def _env(settings: dict[str, Any], secrets: SecretEnv | None = None) -> list[dict[str, Any]]:
    """A container's env: the settings as their PROTEGE_* variables (:func:`protege.config.as_environment`,
    as `protege up` gives its processes theirs), then the variables whose values are Secret keys."""
    env: list[dict[str, Any]] = [{"name": n, "value": v} for n, v in as_environment(settings).items()]
    for name, (secret, key) in (secrets or {}).items():
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def _store_settings(platform: Platform) -> tuple[dict[str, Any], SecretEnv]:
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


def _store_env(platform: Platform) -> list[dict[str, Any]]:
    return _env(*_store_settings(platform))


def _pool_token_secret(platform: Platform) -> SecretEnv:
    return {setting_variable("pool_token"): (platform.pool_token_secret, "token")}


def _pool_token_env(platform: Platform) -> dict[str, Any]:
    [env] = _env({}, _pool_token_secret(platform))
    return env


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


def _resources(
    resources: ComputeResources, pool: SpecialistPoolSpec, gpus: int | None = None
) -> dict[str, Any]:
    """A model-loading worker's resources; its ephemeral storage is requested, not limited (the
    cache's emptyDir has its own size limit)."""
    amounts: dict[str, Any] = {"cpu": str(resources.cpu), "memory": str(resources.memory)}
    count = resources.gpu if gpus is None else gpus
    if count:
        amounts["nvidia.com/gpu"] = str(count)
    return {"requests": {**amounts, "ephemeral-storage": _ephemeral_storage(pool)}, "limits": amounts}


def _ephemeral_storage(pool: SpecialistPoolSpec) -> str:
    """The working space, and the model cache when it is an emptyDir (on the node's disk)."""
    cache = pool.model_cache
    total = quantity_value(WORKING_SPACE) + (0 if cache.claim_name else quantity_value(cache.size))
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20)):
        if total % unit == 0:
            return f"{int(total // unit)}{suffix}"
    return str(int(total))


MODEL_CACHE_VOLUME = "model-cache"
BASE_MODEL_VOLUME = "base-model"


@dataclass(frozen=True)
class ModelAccess:
    """What a pod that loads the pool's base model gets (:mod:`protege.models.resolve` reads it):
    the model cache as its model store and the hub's cache, a pvc:// source's claim read-only, the
    hub token from its Secret."""

    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]

    @classmethod
    def of(cls, pool: SpecialistPoolSpec) -> ModelAccess:
        base, cache = pool.base_model, pool.model_cache
        env: list[dict[str, Any]] = [
            *_env({"model_store": str(MODEL_CACHE_DIR)}),
            {"name": "HF_HOME", "value": str(HF_HOME_DIR)},
        ]
        if base.token_secret_ref is not None:
            ref = {"name": base.token_secret_ref.name, "key": base.token_secret_ref.key}
            env.append({"name": HF_TOKEN_VARIABLE, "valueFrom": {"secretKeyRef": ref}})
        cached = (
            {"persistentVolumeClaim": {"claimName": cache.claim_name}}
            if cache.claim_name
            else {"emptyDir": {"sizeLimit": str(cache.size)}}
        )
        volumes: list[dict[str, Any]] = [{"name": MODEL_CACHE_VOLUME, **cached}]
        mounts: list[dict[str, Any]] = [{"name": MODEL_CACHE_VOLUME, "mountPath": str(MODEL_CACHE_DIR)}]
        if (volume := volume_source(base.source)) is not None:
            claim = {"claimName": volume.claim, "readOnly": True}
            volumes.append({"name": BASE_MODEL_VOLUME, "persistentVolumeClaim": claim})
            mounts.append({"name": BASE_MODEL_VOLUME, "mountPath": str(volume.mount_dir()), "readOnly": True})
        return cls(env, volumes, mounts)


def _with_overrides(template: dict[str, Any], overrides: PodOverrides) -> dict[str, Any]:
    """A pod template with the platform's and the pool's overrides (labels already checked: none
    replaces a label pods are selected by)."""
    metadata = dict(template.get("metadata", {}))
    for field, values in (("labels", overrides.labels), ("annotations", overrides.annotations)):
        if values:
            metadata[field] = {**metadata.get(field, {}), **values}
    pod = dict(template["spec"])
    if overrides.image_pull_secrets:
        pod["imagePullSecrets"] = [secret.to_kube() for secret in overrides.image_pull_secrets]
    if overrides.service_account_name:
        pod["serviceAccountName"] = overrides.service_account_name
    if overrides.priority_class_name:
        pod["priorityClassName"] = overrides.priority_class_name
    return {"metadata": metadata, "spec": pod} if metadata else {"spec": pod}


def pod_templates(spec: SpecialistPoolSpec, platform: Platform) -> PodTemplates:
    """The pool's pod overrides laid over the platform's."""
    return spec.pod_template.over(platform.pod_templates)


def _head(image: str, env: list[dict[str, Any]], overrides: PodOverrides) -> dict[str, Any]:
    """A head that runs no replicas or training itself (num-cpus 0): workers do the work."""
    template = {
        "spec": {
            "containers": [
                {
                    "name": "ray-head",
                    "image": image,
                    "env": env,
                    "ports": [
                        {"containerPort": 6379, "name": "gcs"},
                        {"containerPort": 8265, "name": "dashboard"},
                        {"containerPort": SERVE_PORT, "name": "serve"},
                    ],
                    "resources": {
                        "requests": {"cpu": "1", "memory": "4Gi"},
                        "limits": {"cpu": "2", "memory": "4Gi"},
                    },
                }
            ]
        }
    }
    return {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": _with_overrides(template, overrides),
    }


def _worker_template(
    image: str,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    node_selector: dict[str, str],
    tolerations: list[Toleration],
    *,
    model: ModelAccess,
    overrides: PodOverrides,
) -> dict[str, Any]:
    """A worker that loads the base model (a serving replica, a training worker)."""
    container = {
        "name": "ray-worker",
        "image": image,
        "env": [*env, *model.env],
        "resources": resources,
        "volumeMounts": model.mounts,
    }
    pod: dict[str, Any] = {"containers": [container], "volumes": model.volumes}
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = [t.to_kube() for t in tolerations]
    return _with_overrides({"spec": pod}, overrides)


def ray_service_name(pool: str) -> str:
    """``<pool>-serve``, within KubeRay's 47 characters (:func:`child_name`)."""
    return child_name(pool, "serve", KUBERAY_NAME_MAX)


def render_ray_service(owner: Owner, spec: SpecialistPoolSpec, platform: Platform) -> dict[str, Any]:
    """The pool's RayService: its Serve app, autoscaled between replicas.min and replicas.max."""
    image = spec.image or platform.serving_image
    env = [*_store_env(platform), _pool_token_env(platform)]  # the engine refuses calls without it
    overrides = pod_templates(spec, platform).serving
    gpus = spec.resources.gpu  # per worker pod: tensor parallelism shares them, it does not multiply them
    workers = {
        "groupName": "gpu" if gpus else "cpu",
        "replicas": spec.replicas.min,
        "minReplicas": spec.replicas.min,
        "maxReplicas": spec.replicas.max,
        "rayStartParams": {},
        "template": _worker_template(
            image,
            env,
            _resources(spec.resources, spec, gpus),
            spec.node_selector,
            spec.tolerations,
            model=ModelAccess.of(spec),
            overrides=overrides,
        ),
    }
    serve_config = {"applications": [serve_application(owner.name, spec)]}
    service = _plain(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": _metadata(ray_service_name(owner.name), owner, "pool"),
            "spec": {
                "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                "rayClusterConfig": {
                    "rayVersion": RAY_VERSION,
                    "enableInTreeAutoscaling": True,
                    "headGroupSpec": _head(image, env, overrides),
                    "workerGroupSpecs": [workers],
                },
            },
        }
    )
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # its NetworkPolicy selects them
        metadata = group["template"].setdefault("metadata", {})
        metadata["labels"] = {**ray_pod_labels(owner.name), **metadata.get("labels", {})}
    return service


def ray_pod_labels(pool: str) -> dict[str, str]:
    """The labels of a pool's serving Ray pods, head and workers (KubeRay keeps a template's labels).

    Not ``app.kubernetes.io/name``: KubeRay sets it to ``kuberay`` and lets a template's value
    replace it, and its head and serve Services select pods by it.
    """
    return {"app.kubernetes.io/component": "serving", f"{API_GROUP}/pool": pool}


def training_pod_labels(pool: str) -> dict[str, str]:
    """The labels of a pool's training Ray pods, head and workers (its Specialists' RayJobs' clusters);
    its ``<pool>-training`` NetworkPolicy selects them (:mod:`protege.operator.isolation`)."""
    return {"app.kubernetes.io/component": "training", f"{API_GROUP}/pool": pool}


def training_submitter_labels(pool: str) -> dict[str, str]:
    """The labels of the pods that submit a pool's training jobs (KubeRay's K8sJobMode submitter):
    the one peer besides the cluster itself and KubeRay that reaches a training head's dashboard."""
    return {"app.kubernetes.io/component": "training-submitter", f"{API_GROUP}/pool": pool}


def _submitter(image: str, pool: str, overrides: PodOverrides) -> dict[str, Any]:
    """KubeRay's default submitter pod (the head's image, its resources; KubeRay sets the command
    and the dashboard's address), labelled for the training NetworkPolicy, with the training pods'
    overrides (pull secrets, service account, priority, labels)."""
    template = {
        "metadata": {"labels": training_submitter_labels(pool)},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": image,
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "200Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                }
            ],
        },
    }
    return _with_overrides(template, overrides)


def routes_config_map_name(pool: str) -> str:
    return f"{pool}-routes"


def render_routes(owner: Owner, table: RoutingTable) -> dict[str, Any]:
    """The pool's routing table, mounted into its gateway (re-read when it changes)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(routes_config_map_name(owner.name), owner, "routes"),
        "data": {ROUTES_KEY: table.model_dump_json(indent=1)},
    }


def _scrape_annotations(port: int) -> dict[str, str]:
    """The prometheus.io annotations that annotation-based Prometheus configurations scrape pods by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def gateway_name(pool: str) -> str:
    """``<pool>-gateway``: the name of its Deployment, Service, autoscaler and disruption budget."""
    return child_name(pool, "gateway")


def _gateway_selector(owner: Owner) -> dict[str, str]:
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
    store, store_secrets = _store_settings(platform)
    settings = gateway_settings(
        teacher={"url": str(teacher.url), "model": teacher.model, "timeout_seconds": teacher.timeout_seconds},
        engine_url=f"http://{ray_service_name(owner.name)}-serve-svc.{owner.namespace}.svc:{SERVE_PORT}",
        routes_table=f"/etc/protege/routes/{ROUTES_KEY}",
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
    secrets = {**call_log_secrets, **store_secrets, **_pool_token_secret(platform)}
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
    env = _env(*gateway_environment(owner, spec, platform))
    labels = _gateway_selector(owner)
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
            {"name": "routes", "mountPath": "/etc/protege/routes", "readOnly": True},
            {"name": "spool", "mountPath": "/var/lib/protege"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "keys", "secret": {"secretName": f"{owner.name}-gateway-keys"}},
        {"name": "routes", "configMap": {"name": routes_config_map_name(owner.name)}},
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
        "metadata": _metadata(name, owner, "gateway"),
        "spec": {
            "selector": {"matchLabels": labels},
            "template": _with_overrides(template, pod_templates(spec, platform).gateway),
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, owner, "gateway"),
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [_plain(deployment), _plain(service)]


def render_gateway_autoscaler(owner: Owner, spec: SpecialistPoolSpec) -> dict[str, Any]:
    """The gateway's HorizontalPodAutoscaler: CPU utilisation between gateway.replicas.min and max.

    It exists for every pool (min equal to max pins the count): the HPA controller keeps the
    count within the bounds even where no metrics server answers, and the Deployment never sets
    one, so nothing else writes it.
    """
    gateway = spec.gateway
    target = {"type": "Utilization", "averageUtilization": gateway.target_cpu_utilization}
    return _plain(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(gateway_name(owner.name), owner, "gateway"),
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
    return _plain(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(gateway_name(owner.name), owner, "gateway"),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": _gateway_selector(owner)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )


def render_training_job(
    owner: Owner, job: JobSpec, pool: SpecialistPoolSpec, platform: Platform, *, pool_name: str
) -> dict[str, Any]:
    """A RayJob running the training entrypoint on ``training.workers`` GPU workers.

    Labelled with its pool (the pool's cap on concurrent training jobs counts them) and, with
    ``training.queueName``, with its Kueue queue. Its cluster goes a minute after the job ends
    (``ttlSecondsAfterFinished``): a GPU is not held idle; the result is in the artifact store.
    Its head, workers and submitter pod carry the labels the pool's ``<pool>-training``
    NetworkPolicy selects and admits (:func:`training_pod_labels`, :func:`training_submitter_labels`).
    """
    image = platform.training_image
    env = _store_env(platform)
    overrides = pod_templates(pool, platform).training
    training = job.training
    workers = {
        "groupName": "train",
        "replicas": training.workers,
        "minReplicas": training.workers,
        "maxReplicas": training.workers,
        "rayStartParams": {},
        # training's own placement (other nodes than serving's, often), the pool's by default
        "template": _worker_template(
            image,
            env,
            _resources(training.resources, pool),
            pool.node_selector if training.node_selector is None else training.node_selector,
            pool.tolerations if training.tolerations is None else training.tolerations,
            model=ModelAccess.of(pool),
            overrides=overrides,
        ),
    }
    spec_json = json.dumps(
        job.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    metadata = _metadata(job_name(job), owner, "training")
    metadata["labels"][f"{API_GROUP}/pool"] = pool_name
    if training.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = training.queue_name
    rayjob = _plain(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": metadata,
            "spec": {
                "entrypoint": f"python -m protege.training.job --spec {shlex.quote(spec_json)}",
                "entrypointNumCpus": 1,
                # one worker trains in the entrypoint itself; with more, Ray Train's workers take the GPUs
                "entrypointNumGpus": training.resources.gpu if training.workers == 1 else 0,
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": FINISHED_CLUSTER_TTL_SECONDS,
                "activeDeadlineSeconds": training.active_deadline_seconds,
                "backoffLimit": 0,
                "submissionMode": "K8sJobMode",
                "submitterPodTemplate": _submitter(image, pool_name, overrides),
                "rayClusterSpec": {
                    "rayVersion": RAY_VERSION,
                    "headGroupSpec": _head(image, env, overrides),
                    "workerGroupSpecs": [workers],
                },
            },
        }
    )
    cluster = rayjob["spec"]["rayClusterSpec"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:  # its NetworkPolicy selects them
        metadata = group["template"].setdefault("metadata", {})
        metadata["labels"] = {**training_pod_labels(pool_name), **metadata.get("labels", {})}
    return rayjob
