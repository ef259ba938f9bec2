"""The operator's renderers: golden manifests, valid against KubeRay's real CRDs and Kubernetes' schemas."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from protege.api.jobs import JobSpec, job_id, job_name
from protege.api.naming import KUBERAY_NAME_MAX, child_name, is_dns_1035_label
from protege.api.pods import PodOverrides
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import RolloutStage
from protege.api.specialist import SpecialistSpec, TrainingSpec
from protege.crds.validate import CrdCatalogue
from protege.models.sources import volume_source
from protege.operator.gateway import (
    gateway_name,
    render_gateway,
    render_gateway_autoscaler,
    render_gateway_disruption_budget,
)
from protege.operator.platform import Owner, Platform
from protege.operator.ray_service import ray_service_name, render_ray_service
from protege.operator.routing import render_routes
from protege.operator.training_jobs import render_training_job
from protege.serving.router.table import Candidate, RoutingTable, SpecialistRoute

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
KUBERAY = Path(__file__).parent / "kuberay-crds"  # KubeRay v1.7.0, vendored
PLATFORM = Platform(
    serving_image="registry.example/protege-serving:1.0",
    training_image="registry.example/protege-training:1.0",
    gateway_image="registry.example/protege:1.0",
    artifact_store="s3://protege/artifacts",
    s3_endpoint="http://minio.storage:9000",
)
# A platform with pod overrides for every pool (the chart's platform.podTemplate), and a pool with
# its own over them and an autoscaled gateway of its own bounds.
PLATFORM_OVERRIDES = {
    "gateway": {"imagePullSecrets": [{"name": "platform-registry"}], "priorityClassName": "platform-high"},
    "serving": {"imagePullSecrets": [{"name": "platform-registry"}], "labels": {"team": "platform"}},
    "training": {"serviceAccountName": "platform-training", "annotations": {"example.com/cost": "ml"}},
}
POOL_OVERRIDES = {
    "gateway": {
        "replicas": {"min": 1, "max": 4},
        "targetCpuUtilization": 60,
        "drainSeconds": 90,
    },
    "podTemplate": {
        "gateway": {
            "imagePullSecrets": [{"name": "agents-registry"}],
            "serviceAccountName": "agents-gateway",
            "labels": {"team": "agents"},
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "serving": {
            "serviceAccountName": "agents-s3-reader",  # a workload identity for the artifact store
            "priorityClassName": "gpu-serving",
            "labels": {"team": "agents"},
        },
        "training": {
            "imagePullSecrets": [{"name": "agents-registry"}],
            "priorityClassName": "gpu-batch",
            "annotations": {"example.com/cost": "agents-training"},
        },
    },
}
# A gated hub model at a pinned revision, its cache on a shared claim; and a model on a volume.
GATED_HUB_MODEL = {
    "baseModel": {
        "source": "hf://meta-llama/Llama-3.2-1B-Instruct",
        "revision": "9213176726f574b556790deb65791e0c5aa438b6",
        "tokenSecretRef": {"name": "hf-token", "key": "token"},
    },
    "modelCache": {"claimName": "model-cache"},
}
VOLUME_MODEL = {"baseModel": {"source": "pvc://weights/llama-3.2-1b"}, "modelCache": {"size": "40Gi"}}
POOL_OWNER = Owner("SpecialistPool", "smollm2-pool", "agents", "2b1f5a3e-0000-4000-8000-000000000001")
SPECIALIST_OWNER = Owner("Specialist", "sql-writer", "agents", "2b1f5a3e-0000-4000-8000-000000000002")


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())["spec"])


def rendered() -> dict[str, Any]:
    pool = SpecialistPoolSpec.model_validate(example("pool"))
    specialist = SpecialistSpec.model_validate(example("specialist"))
    job = JobSpec(
        specialist="sql-writer",
        task=specialist.task.id or "",
        dataset_version="v0123456789abcdef",
        base_model=pool.base_model.source,
        max_lora_rank=pool.engine.max_lora_rank,
        training=specialist.training,
        evaluation=specialist.evaluation,
    )
    table = RoutingTable(
        routes=[
            SpecialistRoute(
                specialist="sql-writer",
                tenant="acme",
                task_id=job.task,
                active="v1111111111111111",
                candidate=Candidate(
                    version="v2222222222222222", stage=RolloutStage.CANARY, traffic_percent=10
                ),
                fallback=specialist.fallback,
            )
        ]
    )
    deployment, service = render_gateway(POOL_OWNER, pool, PLATFORM)
    sharded = pool.model_copy(
        update={
            "resources": pool.resources.model_copy(update={"gpu": 2}),
            "engine": pool.engine.model_copy(update={"tensor_parallel_size": 2}),
        }
    )
    two_workers = job.model_copy(update={"training": job.training.model_copy(update={"workers": 2})})
    custom = SpecialistPoolSpec.model_validate(example("pool") | POOL_OVERRIDES)
    platform = dataclasses.replace(PLATFORM, pod_template=json.dumps(PLATFORM_OVERRIDES))
    custom_deployment, _ = render_gateway(POOL_OWNER, custom, platform)
    gated = SpecialistPoolSpec.model_validate(example("pool") | GATED_HUB_MODEL)
    on_volume = SpecialistPoolSpec.model_validate(example("pool") | VOLUME_MODEL)
    volume_job = job.model_copy(update={"base_model": on_volume.base_model.source})
    return {
        "rayservice": render_ray_service(POOL_OWNER, pool, PLATFORM),
        "rayservice-tensor-parallel": render_ray_service(POOL_OWNER, sharded, PLATFORM),
        "rayjob": render_training_job(SPECIALIST_OWNER, job, pool, PLATFORM, pool_name=POOL_OWNER.name),
        "rayjob-two-workers": render_training_job(
            SPECIALIST_OWNER, two_workers, pool, PLATFORM, pool_name=POOL_OWNER.name
        ),
        "routes-configmap": render_routes(POOL_OWNER, table),
        "gateway-deployment": deployment,
        "gateway-service": service,
        "gateway-autoscaler": render_gateway_autoscaler(POOL_OWNER, pool),
        "gateway-disruption-budget": render_gateway_disruption_budget(POOL_OWNER),
        # a pool with pod overrides over the platform's, and its own gateway bounds
        "gateway-deployment-overrides": custom_deployment,
        "gateway-autoscaler-overrides": render_gateway_autoscaler(POOL_OWNER, custom),
        "rayservice-overrides": render_ray_service(POOL_OWNER, custom, platform),
        "rayjob-overrides": render_training_job(
            SPECIALIST_OWNER, job, custom, platform, pool_name=POOL_OWNER.name
        ),
        # where the model comes from: a gated hub model, cached on a claim; a model on a volume
        "rayservice-gated-hub-model": render_ray_service(POOL_OWNER, gated, PLATFORM),
        "rayjob-volume-model": render_training_job(
            SPECIALIST_OWNER, volume_job, on_volume, PLATFORM, pool_name=POOL_OWNER.name
        ),
    }


@pytest.mark.parametrize("name", sorted(rendered()))
def test_renders_match_their_golden_files(name: str) -> None:
    """UPDATE_GOLDEN=1 rewrites them; review the diff like any other change."""
    text = yaml.safe_dump(rendered()[name], sort_keys=False)
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_kuberay_objects_validate_against_kuberays_crds() -> None:
    catalogue = CrdCatalogue.from_paths(sorted(KUBERAY.glob("*.yaml")))
    objects = rendered()
    for name in objects:
        if objects[name]["apiVersion"] == "ray.io/v1":
            assert catalogue.errors(objects[name]) == [], name
    broken = objects["rayjob"] | {"spec": {**objects["rayjob"]["spec"], "backoffLimit": "zero"}}
    assert catalogue.errors(broken)  # the check can fail


def test_core_objects_validate_against_kubernetes_schemas() -> None:
    objects = rendered()
    core = [name for name in objects if objects[name]["apiVersion"] != "ray.io/v1"]
    assert len(core) == 7
    for name in core:
        kubernetes_validate.validate(objects[name], "1.31", strict=True)


def test_children_are_owned_and_secrets_only_referenced() -> None:
    objects = rendered()
    for obj in objects.values():
        [reference] = obj["metadata"]["ownerReferences"]
        assert reference["controller"] is True and reference["apiVersion"] == "protege.dev/v1alpha1"
    text = yaml.safe_dump(objects)
    assert "apiKey" in text and "secretKeyRef" in text  # the teacher key and S3 keys by reference
    env = objects["gateway-deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    teacher_key = next(e for e in env if e["name"] == "PROTEGE_TEACHER__API_KEY")
    assert teacher_key == {
        "name": "PROTEGE_TEACHER__API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "teacher", "key": "apiKey"}},
    }


def test_every_ray_cluster_asks_for_rays_token_authentication() -> None:
    """The pool's RayService and every training RayJob: KubeRay makes each cluster a token and its
    dashboard (jobs, Serve deployments) refuses requests without it."""
    objects = rendered()
    clusters = [o["spec"]["rayClusterConfig"] for o in objects.values() if o["kind"] == "RayService"]
    clusters += [o["spec"]["rayClusterSpec"] for o in objects.values() if o["kind"] == "RayJob"]
    assert len(clusters) >= 8
    assert all(cluster["authOptions"] == {"mode": "token"} for cluster in clusters)


def test_the_pool_spec_reaches_the_serve_app_and_the_gpu_workers() -> None:
    service = rendered()["rayservice"]
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    assert serve["import_path"] == "protege.serving.pool.app:build"
    assert serve["deployments"][0]["autoscaling_config"]["max_replicas"] == 8
    [workers] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (1, 8)
    pod = workers["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    # KubeRay lets a template's label replace its own, and its Services select pods by these
    assert not {"app.kubernetes.io/name", "app.kubernetes.io/created-by"} & {
        *head,
        *workers["template"]["metadata"]["labels"],
    }


def test_a_tensor_parallel_pool_asks_for_each_replicas_gpus_once() -> None:
    """resources.gpu is per replica; tensorParallelSize shards the model over them (2 and 2: 2 GPUs)."""
    service = rendered()["rayservice-tensor-parallel"]
    [workers] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    [deployment] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert deployment["ray_actor_options"]["num_gpus"] == 2


def _pods(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker pod and the head pod of a RayService or a RayJob."""
    cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    [workers] = cluster["workerGroupSpecs"]
    return workers["template"]["spec"], cluster["headGroupSpec"]["template"]["spec"]


def test_model_loading_pods_get_the_model_cache_and_ask_for_its_disk() -> None:
    """Serving and training workers: the cache at one path as their model store and the hub's cache,
    an emptyDir of modelCache.size by default, requested as ephemeral storage with the working space."""
    objects = rendered()
    for name in ("rayservice", "rayjob"):
        pod, head = _pods(objects[name])
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["PROTEGE_MODEL_STORE"], env["HF_HOME"]) == ("/models/cache", "/models/cache/huggingface")
        assert "HF_TOKEN" not in env
        assert pod["volumes"][0] == {"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}}
        assert container["volumeMounts"][0] == {"name": "model-cache", "mountPath": "/models/cache"}
        assert container["resources"]["requests"]["ephemeral-storage"] == "30Gi"  # 20Gi + 10Gi
        assert "ephemeral-storage" not in container["resources"]["limits"]  # the emptyDir is limited
        assert "volumes" not in head and "PROTEGE_MODEL_STORE" not in str(head)  # the head loads none


def test_a_gated_hub_model_gets_its_token_by_reference_and_a_shared_cache_claim() -> None:
    service = rendered()["rayservice-gated-hub-model"]
    pod, _ = _pods(service)
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert pod["volumes"][0] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}
    assert container["volumeMounts"][0] == {"name": "model-cache", "mountPath": "/models/cache"}
    assert container["resources"]["requests"]["ephemeral-storage"] == "10Gi"  # the cache is not on the node
    base = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["spec"]["baseModel"]
    assert base == {  # the replicas resolve the pinned revision; the token is the pod's, not the app's
        "source": "hf://meta-llama/Llama-3.2-1B-Instruct",
        "revision": "9213176726f574b556790deb65791e0c5aa438b6",
    }
    # Another token Secret or cache: new pods, the same Serve application (no redeploy of its own).
    moved = SpecialistPoolSpec.model_validate(
        example("pool")
        | GATED_HUB_MODEL
        | {
            "baseModel": {**GATED_HUB_MODEL["baseModel"], "tokenSecretRef": {"name": "hf-2", "key": "t"}},
            "modelCache": {"size": "80Gi"},
        }
    )
    other = render_ray_service(POOL_OWNER, moved, PLATFORM)
    assert other["spec"]["serveConfigV2"] == service["spec"]["serveConfigV2"]
    assert other["spec"]["rayClusterConfig"] != service["spec"]["rayClusterConfig"]


def test_a_volume_model_mounts_its_claim_read_only_where_the_resolver_looks() -> None:
    job = rendered()["rayjob-volume-model"]
    pod, _ = _pods(job)
    [container] = pod["containers"]
    assert pod["volumes"] == [
        {"name": "model-cache", "emptyDir": {"sizeLimit": "40Gi"}},
        {"name": "base-model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}},
    ]
    mount = {"name": "base-model", "mountPath": "/models/pvc/weights", "readOnly": True}
    assert mount in container["volumeMounts"]
    assert container["resources"]["requests"]["ephemeral-storage"] == "50Gi"
    source = volume_source("pvc://weights/llama-3.2-1b")
    assert source is not None and str(source.model_dir()) == "/models/pvc/weights/llama-3.2-1b"
    assert "pvc://weights/llama-3.2-1b" in job["spec"]["entrypoint"]


def test_child_names_fit_kuberay_and_two_long_names_never_share_one() -> None:
    """KubeRay refuses RayJob and RayService names over 47 characters or not DNS-1035 (ValidationFailed)."""
    long_a, long_b = "a" * 50 + "-invoices", "a" * 50 + "-receipts"  # 59 characters, 50 in common
    names = []
    for specialist in (long_a, long_b, "sql-writer", "x" * 63):
        job = JobSpec(specialist=specialist, task="t", base_model="smollm2-135m")
        names.append(job_name(job))
        assert is_dns_1035_label(job_name(job), KUBERAY_NAME_MAX), job_name(job)
        assert job_name(job).endswith(f"-train-{job_id(job)}")
    assert len(set(names)) == 4 and names[2].startswith("sql-writer-train-")  # short names stay whole
    for pool in (long_a, long_b, "p" * 63, "smollm2-pool"):
        assert is_dns_1035_label(ray_service_name(pool), KUBERAY_NAME_MAX), ray_service_name(pool)
        assert is_dns_1035_label(gateway_name(pool)), gateway_name(pool)
    assert ray_service_name(long_a) != ray_service_name(long_b)
    assert (ray_service_name("smollm2-pool"), gateway_name("smollm2-pool")) == (
        "smollm2-pool-serve",
        "smollm2-pool-gateway",
    )
    assert is_dns_1035_label(
        child_name("7-eleven", "serve", KUBERAY_NAME_MAX)
    )  # DNS-1035 starts with a letter


def test_training_job_names_are_deterministic() -> None:
    job = JobSpec(specialist="sql-writer", task="t", base_model="smollm2-135m")
    assert job_name(job) == job_name(job.model_copy()) and job_name(job).startswith("sql-writer-train-")
    other = job.model_copy(update={"dataset_version": "v9"})
    assert job_name(job) != job_name(other)
    v2, v3 = (job.model_copy(update={"base_model_revision": r}) for r in ("v2", "v3"))  # other weights
    assert len({job_name(job), job_name(v2), job_name(v3)}) == 3
    passes = job.model_copy(update={"training": job.training.model_copy(update={"micro_batch_size": 2})})
    assert job_name(passes) != job_name(
        job
    )  # set, a field added later names a new job; unset, the golden names stay
    entrypoint = rendered()["rayjob"]["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m protege.training.job --spec '{")


def test_protege_render_prints_what_the_operator_would_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from protege.cli import app
    from protege.operator.isolation import NETWORK_POLICIES_VARIABLE

    pool, specialist = str(ROOT / "examples" / "pool.yaml"), str(ROOT / "examples" / "specialist.yaml")
    monkeypatch.delenv(NETWORK_POLICIES_VARIABLE, raising=False)
    result = CliRunner().invoke(app, ["render", "-f", pool, "-f", specialist, "-n", "agents"])
    assert result.exit_code == 0, result.output
    documents = list(yaml.safe_load_all(result.output))
    applied = ["RayService", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert [d["kind"] for d in documents] == [*applied, "ConfigMap", "RayJob"]  # in the operator's order
    monkeypatch.setenv(NETWORK_POLICIES_VARIABLE, '{"kuberay": [], "prometheus": []}')  # networkPolicies on
    isolated = CliRunner().invoke(app, ["render", "-f", pool, "-n", "agents"])
    kinds = [d["kind"] for d in yaml.safe_load_all(isolated.output)]
    assert isolated.exit_code == 0 and kinds[: len(applied)] == applied and "NetworkPolicy" in kinds
    catalogue = CrdCatalogue.from_paths(sorted(KUBERAY.glob("*.yaml")))
    assert all(catalogue.errors(d) == [] for d in documents if d["apiVersion"] == "ray.io/v1")

    alone = CliRunner().invoke(app, ["render", "-f", specialist])
    assert alone.exit_code != 0 and "its pool 'smollm2-pool' is not among the files" in alone.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(pool).read_text().replace("maxLoraRank: 32", "maxLoraRank: 33"))
    refused = CliRunner().invoke(app, ["render", "-f", str(bad)])
    assert refused.exit_code != 0 and "maxLoraRank 33 is not a rank vLLM supports" in refused.output


def test_training_pods_go_where_the_specialist_says_else_where_the_pool_serves() -> None:
    pool = SpecialistPoolSpec.model_validate(example("pool"))
    job = JobSpec(specialist="sql-writer", task="t", base_model="smollm2-135m")

    def placement(training: dict[str, Any]) -> dict[str, Any]:
        placed = job.model_copy(update={"training": TrainingSpec.model_validate(training)})
        rendered = render_training_job(SPECIALIST_OWNER, placed, pool, PLATFORM, pool_name=POOL_OWNER.name)
        [workers] = rendered["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        pod = workers["template"]["spec"]
        return {key: pod.get(key) for key in ("nodeSelector", "tolerations")}

    assert placement({}) == {
        "nodeSelector": pool.node_selector,
        "tolerations": [t.to_kube() for t in pool.tolerations],
    }
    spot = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
    own = placement({"nodeSelector": {"pool": "training-a100"}, "tolerations": [spot]})
    assert own == {"nodeSelector": {"pool": "training-a100"}, "tolerations": [spot]}
    assert placement({"nodeSelector": {}, "tolerations": []}) == {"nodeSelector": None, "tolerations": None}


def test_gateway_metrics_are_scraped_from_their_own_port_which_the_service_leaves_out() -> None:
    objects = rendered()
    template = objects["gateway-deployment"]["spec"]["template"]
    [container] = template["spec"]["containers"]
    assert {"containerPort": 9090, "name": "metrics"} in container["ports"]
    assert {"name": "PROTEGE_GATEWAY__METRICS_PORT", "value": "9090"} in container["env"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    assert [port["name"] for port in objects["gateway-service"]["spec"]["ports"]] == ["http"]


def test_gateways_get_their_call_log_identity_and_pools_their_token_by_reference() -> None:
    """The gateway's NATS password and the pool token are secretKeyRefs; a NATS without
    authentication gets no identity; with TLS the CA is mounted where the setting says."""
    pool = SpecialistPoolSpec.model_validate(example("pool"))

    def gateway_env(platform: Platform) -> dict[str, dict[str, Any]]:
        deployment, _ = render_gateway(POOL_OWNER, pool, platform)
        return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    env = gateway_env(PLATFORM)
    assert env["PROTEGE_NATS_AUTH__USER"]["value"] == "gateway"
    assert env["PROTEGE_NATS_AUTH__PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "protege-nats-auth", "key": "gateway"}
    }
    assert env["PROTEGE_POOL_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "protege-pool-token", "key": "token"}
    }
    head = render_ray_service(POOL_OWNER, pool, PLATFORM)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert env["PROTEGE_POOL_TOKEN"] in head["template"]["spec"]["containers"][0]["env"]
    assert not any(
        name.startswith("PROTEGE_NATS_AUTH") for name in gateway_env(Platform(nats_auth_secret=""))
    )
    tls = Platform(nats_url="tls://nats.messaging:4222", nats_tls_ca_secret="nats-ca", call_log_replicas="3")
    deployment, _ = render_gateway(POOL_OWNER, pool, tls)
    pod = deployment["spec"]["template"]["spec"]
    mounted = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    ca_file = gateway_env(tls)["PROTEGE_NATS_AUTH__TLS_CA_FILE"]["value"]
    assert ca_file == f"{mounted['nats-ca']}/ca.crt"
    assert {"name": "nats-ca", "secret": {"secretName": "nats-ca"}} in pod["volumes"]
    assert gateway_env(tls)["PROTEGE_CALL_LOG__REPLICAS"]["value"] == "3"
    kubernetes_validate.validate(deployment, "1.31", strict=True)


def test_the_gateways_autoscaler_owns_its_replica_count() -> None:
    """The HPA keeps the count within gateway.replicas; the Deployment sets none, so a re-apply never
    resets what the HPA chose; the budget lets one pod go at a time, and selects what the Deployment
    and the Service select."""
    objects = rendered()
    deployment, service = objects["gateway-deployment"], objects["gateway-service"]
    assert "replicas" not in deployment["spec"]
    for name, bounds in (("gateway-autoscaler", (2, 10, 70)), ("gateway-autoscaler-overrides", (1, 4, 60))):
        hpa = objects[name]["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "smollm2-pool-gateway",
        }
        [metric] = hpa["metrics"]
        assert (
            hpa["minReplicas"],
            hpa["maxReplicas"],
            metric["resource"]["target"]["averageUtilization"],
        ) == bounds
    # CPU utilisation is a share of the request: the gateway's container must have one
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m"
    budget = objects["gateway-disruption-budget"]["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget  # one replica can still be drained
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert budget["selector"]["matchLabels"] == selector == service["spec"]["selector"]
    for overridden in ("gateway-deployment", "gateway-deployment-overrides"):
        labels = objects[overridden]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()  # overrides never take a pod out of its selectors

    refused = {**example("pool"), "gateway": {"replicas": {"min": 3, "max": 2}}}
    with pytest.raises(ValueError, match=r"gateway.replicas.min \(3\) exceeds gateway.replicas.max \(2\)"):
        SpecialistPoolSpec.model_validate(refused)
    catalogue = CrdCatalogue.from_paths([ROOT / "crds" / "specialistpools.protege.dev.yaml"])
    body = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text()) | {"spec": refused}
    body["metadata"]["namespace"] = "agents"
    assert catalogue.errors(body) == [
        "spec.gateway.replicas: gateway.replicas.min must not exceed gateway.replicas.max"
    ]


def test_a_stopping_gateway_drains_before_it_is_killed() -> None:
    """preStop: new calls stop coming; SIGTERM: calls in flight get drainSeconds, then the call log is
    flushed; the grace period covers the three, so SIGKILL never comes first."""
    for name, drain in (("gateway-deployment", 30), ("gateway-deployment-overrides", 90)):
        pod = rendered()[name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PROTEGE_GATEWAY__DRAIN_SECONDS"] == str(drain)
        assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
        assert pod["terminationGracePeriodSeconds"] == 5 + drain + 15
        assert [e["name"] for e in container["env"]].count("PROTEGE_HOME") == 1  # no duplicate
        spool = next(m for m in container["volumeMounts"] if m["name"] == "spool")
        assert env["PROTEGE_HOME"] == spool["mountPath"]  # journal and spool on the pod's volume


def test_pod_overrides_go_over_the_platforms_and_never_over_selector_labels() -> None:
    objects = rendered()
    gateway = objects["gateway-deployment-overrides"]["spec"]["template"]
    assert gateway["spec"]["imagePullSecrets"] == [{"name": "platform-registry"}, {"name": "agents-registry"}]
    assert gateway["spec"]["serviceAccountName"] == "agents-gateway"
    assert gateway["spec"]["priorityClassName"] == "platform-high"  # the pool's when it sets one
    assert gateway["metadata"]["labels"]["team"] == "agents"
    assert gateway["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert gateway["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # the operator's stay
    service = objects["rayservice-overrides"]["spec"]["rayClusterConfig"]
    for group in (service["headGroupSpec"], *service["workerGroupSpecs"]):
        pod = group["template"]
        assert pod["spec"]["serviceAccountName"] == "agents-s3-reader"
        assert pod["spec"]["priorityClassName"] == "gpu-serving"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "platform-registry"}]
        assert pod["metadata"]["labels"]["team"] == "agents"
    cluster = objects["rayjob-overrides"]["spec"]["rayClusterSpec"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        pod = group["template"]
        assert pod["spec"]["serviceAccountName"] == "platform-training"
        assert pod["spec"]["priorityClassName"] == "gpu-batch"
        assert pod["metadata"]["annotations"] == {"example.com/cost": "agents-training"}
    # the engines are not redeployed for a change of the gateway's or the pods' settings
    plain = yaml.safe_load(objects["rayservice"]["spec"]["serveConfigV2"])
    custom = yaml.safe_load(objects["rayservice-overrides"]["spec"]["serveConfigV2"])
    assert plain == custom
    # no overrides: nothing added
    head = objects["rayservice"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert not {"imagePullSecrets", "serviceAccountName", "priorityClassName"} & set(head["spec"])

    catalogue = CrdCatalogue.from_paths([ROOT / "crds" / "specialistpools.protege.dev.yaml"])
    body = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    body["metadata"]["namespace"] = "agents"
    for key in (
        "protege.dev/pool",
        "ray.io/node-type",
        "app.kubernetes.io/name",
        "app.kubernetes.io/created-by",
    ):
        bad = copy.deepcopy(body)
        bad["spec"]["podTemplate"] = {"serving": {"labels": {key: "x", "team": "a"}}}
        [error] = catalogue.errors(bad)
        assert error.startswith("spec.podTemplate.serving.labels: podTemplate labels may not set"), error
        with pytest.raises(
            ValueError, match=re.escape(f"{key}: podTemplate labels may not set the labels pods are")
        ):
            SpecialistPoolSpec.model_validate(bad["spec"])
        with pytest.raises(ValueError, match=r"PROTEGE_OPERATOR_POD_TEMPLATE .* is not valid"):
            Platform(pod_template=json.dumps({"training": {"labels": {key: "x"}}}))
    fine = copy.deepcopy(body)
    fine["spec"]["podTemplate"] = {"serving": {"labels": {"app.kubernetes.io/part-of": "agents"}}}
    assert catalogue.errors(fine) == []
    with pytest.raises(ValueError, match="not valid"):
        Platform(pod_template="{not json")
    assert PodOverrides().over(PodOverrides()) == PodOverrides()


def test_serving_pods_read_the_routing_table_the_gateway_reads() -> None:
    """Each replica preloads the versions the table routes to: its workers mount the pool's routes
    ConfigMap, read-only, where router.table says, as the gateway does."""
    objects = rendered()

    def mounted_table(pod: dict[str, Any]) -> tuple[str, str]:
        [container] = pod["containers"]
        table = {e["name"]: e.get("value") for e in container["env"]}["PROTEGE_ROUTER__TABLE"]
        [volume] = [v for v in pod["volumes"] if "configMap" in v]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] and table.startswith(mount["mountPath"] + "/")
        return volume["configMap"]["name"], table

    gateway = objects["gateway-deployment"]["spec"]["template"]["spec"]
    [workers] = objects["rayservice"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert mounted_table(workers["template"]["spec"]) == mounted_table(gateway)
    assert mounted_table(gateway)[0] == render_routes(POOL_OWNER, RoutingTable())["metadata"]["name"]
