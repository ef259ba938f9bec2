"""A Specialist's training run: a KubeRay ``RayJob`` running ``python -m protege.training.job`` on
GPU workers, named after the hash of its job spec (:func:`protege.api.jobs.job_name`)."""

from __future__ import annotations

import json
import shlex
from typing import Any

from protege.api.jobs import JobSpec, job_name
from protege.api.pods import PodOverrides
from protege.api.pool import SpecialistPoolSpec
from protege.operator.platform import API_GROUP, Owner, Platform, child_metadata, plain, store_env
from protege.operator.ray_pods import (
    ModelAccess,
    label_ray_pods,
    pod_templates,
    ray_cluster,
    ray_head,
    ray_worker,
    with_overrides,
    worker_resources,
)

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
FINISHED_CLUSTER_TTL_SECONDS = 60  # a finished training job's Ray cluster (its GPUs) goes after this


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
    return with_overrides(template, overrides)


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
    env = store_env(platform)
    overrides = pod_templates(pool, platform).training
    training = job.training
    workers = {
        "groupName": "train",
        "replicas": training.workers,
        "minReplicas": training.workers,
        "maxReplicas": training.workers,
        "rayStartParams": {},
        # training's own placement (other nodes than serving's, often), the pool's by default
        "template": ray_worker(
            image,
            env,
            worker_resources(training.resources, pool),
            pool.node_selector if training.node_selector is None else training.node_selector,
            pool.tolerations if training.tolerations is None else training.tolerations,
            model=ModelAccess.of(pool),
            overrides=overrides,
        ),
    }
    spec_json = json.dumps(
        job.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    metadata = child_metadata(job_name(job), owner, "training")
    metadata["labels"][f"{API_GROUP}/pool"] = pool_name
    if training.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = training.queue_name
    rayjob = plain(
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
                "rayClusterSpec": ray_cluster(ray_head(image, env, overrides), [workers], autoscaling=False),
            },
        }
    )
    label_ray_pods(rayjob["spec"]["rayClusterSpec"], training_pod_labels(pool_name))
    return rayjob
