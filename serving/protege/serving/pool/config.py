"""What a pool's Serve application runs with, from its SpecialistPool spec (pure).

The same functions give `protege up` its local Serve application and the operator the
``serveConfigV2`` of the pool's KubeRay ``RayService``: nothing is written twice.
"""

from __future__ import annotations

import re
from typing import Any

from protege.api.meta import quantity_value
from protege.api.pool import SpecialistPoolSpec

ENTRYPOINT = "protege.serving.pool.app:build"


def _flag(name: str) -> str:
    return "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", name).replace("_", "-").lower()


def on_cpus(spec: SpecialistPoolSpec) -> bool:
    """Whether the pool's engine is vLLM's CPU build (no GPU per replica)."""
    return spec.resources.gpu == 0


def engine_args(spec: SpecialistPoolSpec) -> list[str]:
    """vLLM server arguments beyond model, name, host, port, context length, dtype and LoRA limits.

    (``VllmServer`` sets those, the dtype on the replica's own machine; multi-LoRA is always on
    in a pool.)
    """
    engine = spec.engine
    args: list[str] = []
    if engine.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(engine.max_cpu_loras)]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if not on_cpus(spec):  # the CPU build sizes its cache from VLLM_CPU_KVCACHE_SPACE instead
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
        args += ["--tensor-parallel-size", str(engine.tensor_parallel_size)]
    else:  # CUDA graphs on GPUs; on CPUs capture only slows the start, decoding barely gains
        args.append("--enforce-eager")
    for name, value in sorted(engine.extra_args.items()):
        if value is True:
            args.append(_flag(name))
        elif value not in (False, None):
            args += [_flag(name), str(value)]
    return args


def deployment_options(spec: SpecialistPoolSpec) -> dict[str, Any]:
    """Ray Serve deployment options: autoscaling from spec.replicas, resources per replica."""
    resources = spec.resources
    actor: dict[str, Any] = {
        "num_cpus": quantity_value(resources.cpu),
        "num_gpus": resources.gpu,  # the replica's GPUs; tensor parallelism shards over them
        "memory": int(quantity_value(resources.memory)),
    }
    if resources.accelerator_type:
        actor["accelerator_type"] = resources.accelerator_type
    return {
        "autoscaling_config": {
            "min_replicas": spec.replicas.min,
            "max_replicas": spec.replicas.max,
            "target_ongoing_requests": spec.replicas.target_ongoing_requests,
        },
        "max_ongoing_requests": max(2 * spec.replicas.target_ongoing_requests, spec.engine.max_num_seqs or 0),
        "ray_actor_options": actor,
    }


# Parts of a pool's spec that the Serve application never reads (the gateway's and the pods'; the
# hub token reaches the replicas as HF_TOKEN, from the pod's environment).
POD_ONLY_FIELDS: dict[str, Any] = {
    "gateway": True,
    "pod_template": True,
    "model_cache": True,
    "base_model": {"token_secret_ref"},
}


def serve_application(name: str, spec: SpecialistPoolSpec) -> dict[str, Any]:
    """One entry of a Serve config's ``applications`` (the RayService's serveConfigV2).

    The spec without its gateway's and pods' parts: a change to those must not redeploy the
    engines (a new serveConfigV2 does).
    """
    engine_spec = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=POD_ONLY_FIELDS)
    return {
        "name": name,
        "route_prefix": "/",
        "import_path": ENTRYPOINT,
        "args": {"pool": name, "spec": engine_spec},
        "deployments": [{"name": "PoolEngine", **deployment_options(spec)}],
    }
