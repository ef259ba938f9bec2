"""The Ray pods of a pool's RayService and of its training RayJobs: a head that runs no work, workers
that load the pool's base model.

The workers mount the pool's model cache, a ``pvc://`` source's claim read-only, and get the hub
token by secret reference (:class:`ModelAccess`); the platform's and the pool's pod overrides
are laid over every template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from protege.api.meta import ComputeResources, Toleration, quantity_value
from protege.api.pods import PodOverrides, PodTemplates
from protege.api.pool import SpecialistPoolSpec
from protege.models.sources import HF_HOME_DIR, HF_TOKEN_VARIABLE, MODEL_CACHE_DIR, volume_source
from protege.operator.platform import Platform, container_env

RAY_VERSION = "2.60.0"
SERVE_PORT = 8000
# Ray's token authentication (Ray >= 2.52, KubeRay >= 1.5.1): KubeRay makes the cluster a Secret
# with a random token and gives it to every Ray container and a RayJob's submitter; the
# dashboard, which submits jobs and deploys code, refuses requests without it.
RAY_AUTH = {"mode": "token"}
# What a serving or training container writes besides the model cache (Ray's logs and spilled
# objects, vLLM's compile cache, adapters, a job's checkpoints): requested as ephemeral storage.
WORKING_SPACE = "10Gi"


def ray_cluster(head: dict[str, Any], workers: list[dict[str, Any]], *, autoscaling: bool) -> dict[str, Any]:
    """A RayService's rayClusterConfig or a RayJob's rayClusterSpec: the Ray version the images
    run, token authentication, the head and the worker groups."""
    cluster: dict[str, Any] = {"rayVersion": RAY_VERSION, "authOptions": dict(RAY_AUTH)}
    if autoscaling:
        cluster["enableInTreeAutoscaling"] = True
    return {**cluster, "headGroupSpec": head, "workerGroupSpecs": workers}


def worker_resources(
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
            *container_env({"model_store": str(MODEL_CACHE_DIR)}),
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


def with_overrides(template: dict[str, Any], overrides: PodOverrides) -> dict[str, Any]:
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


def label_ray_pods(cluster: dict[str, Any], labels: dict[str, str]) -> None:
    """Put ``labels`` on the pods of a Ray cluster spec's head and worker groups (their own labels
    win): the NetworkPolicy that guards the cluster selects its pods by them."""
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        metadata = group["template"].setdefault("metadata", {})
        metadata["labels"] = {**labels, **metadata.get("labels", {})}


def ray_head(image: str, env: list[dict[str, Any]], overrides: PodOverrides) -> dict[str, Any]:
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
        "template": with_overrides(template, overrides),
    }


def ray_worker(
    image: str,
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    node_selector: dict[str, str],
    tolerations: list[Toleration],
    *,
    model: ModelAccess,
    overrides: PodOverrides,
    mounted: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
) -> dict[str, Any]:
    """A worker that loads the base model (a serving replica, a training worker); ``mounted``:
    more (volume, mount) pairs."""
    container = {
        "name": "ray-worker",
        "image": image,
        "env": [*env, *model.env],
        "resources": resources,
        "volumeMounts": [*model.mounts, *(mount for _, mount in mounted)],
    }
    pod: dict[str, Any] = {"containers": [container], "volumes": [*model.volumes, *(v for v, _ in mounted)]}
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = [t.to_kube() for t in tolerations]
    return with_overrides({"spec": pod}, overrides)
