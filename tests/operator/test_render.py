"""The operator's renderers: golden manifests, valid against KubeRay's real CRDs and Kubernetes' schemas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from protege.api.jobs import JobSpec, job_id, job_name
from protege.api.naming import KUBERAY_NAME_MAX, child_name, is_dns_1035_label
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import RolloutStage
from protege.api.specialist import SpecialistSpec, TrainingSpec
from protege.crds.validate import CrdCatalogue
from protege.operator.render import (
    Owner,
    Platform,
    gateway_name,
    ray_service_name,
    render_gateway,
    render_ray_service,
    render_routes,
    render_training_job,
)
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
    for name in ("rayservice", "rayservice-tensor-parallel", "rayjob", "rayjob-two-workers"):
        assert catalogue.errors(objects[name]) == [], name
    broken = objects["rayjob"] | {"spec": {**objects["rayjob"]["spec"], "backoffLimit": "zero"}}
    assert catalogue.errors(broken)  # the check can fail


def test_core_objects_validate_against_kubernetes_schemas() -> None:
    objects = rendered()
    for name in ("routes-configmap", "gateway-deployment", "gateway-service"):
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


def test_a_tensor_parallel_pool_asks_for_each_replicas_gpus_once() -> None:
    """resources.gpu is per replica; tensorParallelSize shards the model over them (2 and 2: 2 GPUs)."""
    service = rendered()["rayservice-tensor-parallel"]
    [workers] = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    [deployment] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert deployment["ray_actor_options"]["num_gpus"] == 2


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
    entrypoint = rendered()["rayjob"]["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m protege.training.job --spec '{")


def test_protege_render_prints_what_the_operator_would_apply(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from protege.cli import app

    pool, specialist = str(ROOT / "examples" / "pool.yaml"), str(ROOT / "examples" / "specialist.yaml")
    result = CliRunner().invoke(app, ["render", "-f", pool, "-f", specialist, "-n", "agents"])
    assert result.exit_code == 0, result.output
    documents = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in documents] == ["RayService", "ConfigMap", "Deployment", "Service", "RayJob"]
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
