"""A SpecialistPool's KubeRay ``RayService``: the pool's Serve application (:mod:`protege.serving.pool`)
on GPU workers, autoscaled between the pool's replicas.min and replicas.max."""

from __future__ import annotations

from typing import Any

import yaml

from protege.api.naming import KUBERAY_NAME_MAX, child_name
from protege.api.pool import SpecialistPoolSpec
from protege.operator.platform import (
    API_GROUP,
    Owner,
    Platform,
    child_metadata,
    container_env,
    plain,
    pool_token_env,
    store_env,
)
from protege.operator.ray_pods import (
    ModelAccess,
    label_ray_pods,
    pod_templates,
    ray_cluster,
    ray_head,
    ray_worker,
    worker_resources,
)
from protege.operator.routing import ROUTES_TABLE, routes_volume
from protege.serving.pool.config import serve_application


def ray_service_name(pool: str) -> str:
    """``<pool>-serve``, within KubeRay's 47 characters (:func:`child_name`)."""
    return child_name(pool, "serve", KUBERAY_NAME_MAX)


def render_ray_service(owner: Owner, spec: SpecialistPoolSpec, platform: Platform) -> dict[str, Any]:
    """The pool's RayService: its Serve app, autoscaled between replicas.min and replicas.max."""
    image = spec.image or platform.serving_image
    env = [*store_env(platform), pool_token_env(platform)]  # the engine refuses calls without it
    overrides = pod_templates(spec, platform).serving
    gpus = spec.resources.gpu  # per worker pod: tensor parallelism shares them, it does not multiply them
    workers = {
        "groupName": "gpu" if gpus else "cpu",
        "replicas": spec.replicas.min,
        "minReplicas": spec.replicas.min,
        "maxReplicas": spec.replicas.max,
        "rayStartParams": {},
        "template": ray_worker(
            image,
            [*env, *container_env({"router": {"table": ROUTES_TABLE}})],
            worker_resources(spec.resources, spec, gpus),
            spec.node_selector,
            spec.tolerations,
            model=ModelAccess.of(spec),
            overrides=overrides,
            mounted=[routes_volume(owner.name)],  # each replica preloads what the table routes to
        ),
    }
    serve_config = {"applications": [serve_application(owner.name, spec)]}
    service = plain(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": child_metadata(ray_service_name(owner.name), owner, "pool"),
            "spec": {
                "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                "rayClusterConfig": ray_cluster(ray_head(image, env, overrides), [workers], autoscaling=True),
            },
        }
    )
    label_ray_pods(service["spec"]["rayClusterConfig"], ray_pod_labels(owner.name))
    return service


def ray_pod_labels(pool: str) -> dict[str, str]:
    """The labels of a pool's serving Ray pods, head and workers (KubeRay keeps a template's labels).

    Not ``app.kubernetes.io/name``: KubeRay sets it to ``kuberay`` and lets a template's value
    replace it, and its head and serve Services select pods by it.
    """
    return {"app.kubernetes.io/component": "serving", f"{API_GROUP}/pool": pool}
