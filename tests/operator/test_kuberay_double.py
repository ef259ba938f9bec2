"""The KubeRay double (protege.testing.kuberay): KubeRay v1.7.0's validation and its state machines.

The rules are checked on the operator's real renders (valid) and on mutations of them (each
rule, with KubeRay's own message); the state machines run against kmock's emulator, driven
pass by pass and by the double's clock, never by sleeping.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from protege.api.jobs import JobSpec
from protege.api.pool import SpecialistPoolSpec
from protege.api.specialist import SpecialistSpec
from protege.operator.platform import Owner, Platform
from protege.operator.ray_service import render_ray_service
from protege.operator.training_jobs import render_training_job
from protege.testing.kuberay import (
    MAX_RAYJOB_NAME_LENGTH,
    KubeRayDouble,
    KubeRayDoubleError,
    is_dns1035_label,
    parse_timestamp,
    rayjob_problem,
    rayservice_problem,
    validate_rayjob,
    validate_rayservice,
)

ROOT = Path(__file__).resolve().parents[2]
KUBERAY_CRDS = Path(__file__).parent / "kuberay-crds"  # KubeRay v1.7.0, vendored
DNS_1035 = (
    "[a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')]"
)  # Go's RegexError, double space included, in a %v-printed []string


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())["spec"])


def rendered_job(specialist: str = "sql-writer", workers: int | None = None) -> dict[str, Any]:
    pool = SpecialistPoolSpec.model_validate(example("pool"))
    spec = SpecialistSpec.model_validate(example("specialist"))
    training = spec.training if workers is None else spec.training.model_copy(update={"workers": workers})
    job = JobSpec(
        specialist=specialist,
        task="t-extract",
        dataset_version="v0123456789abcdef",
        base_model=pool.base_model.source,
        max_lora_rank=pool.engine.max_lora_rank,
        training=training,
        evaluation=spec.evaluation,
    )
    owner = Owner("Specialist", specialist, "agents", "u-specialist")
    return render_training_job(owner, job, pool, Platform(), pool_name="smollm2-pool")


def rendered_service(pool_name: str = "smollm2-pool", **changes: Any) -> dict[str, Any]:
    spec = SpecialistPoolSpec.model_validate(example("pool") | changes)
    return render_ray_service(Owner("SpecialistPool", pool_name, "agents", "u-pool"), spec, Platform())


# --- validation: the operator's renders pass, each rule fails with KubeRay's words ---------


def test_the_operators_renders_pass_kuberays_validation() -> None:
    for job in (rendered_job(), rendered_job(workers=2)):
        assert validate_rayjob(job) is None
    gpu_pool = rendered_service()
    cpu_pool = rendered_service(resources={"gpu": 0, "cpu": "2", "memory": "8Gi"})
    for service in (gpu_pool, cpu_pool):
        assert validate_rayservice(service) is None


@pytest.mark.parametrize(
    "owner",
    [
        "sql-writer",
        "a-specialist-name-of-forty-two-characters1",  # <owner>-train-<10 hex> was 57 characters
        "a-specialist-whose-name-is-as-long-as-any-crd-lets-it-be-63-chr",  # 63: the CRDs' limit
    ],
)
def test_the_names_the_operator_gives_kuberay_objects_pass_kuberay(owner: str) -> None:
    """Any name a Specialist or a pool may have gives RayJob and RayService names KubeRay takes."""
    assert validate_rayjob(rendered_job(owner)) is None
    assert validate_rayservice(rendered_service(owner)) is None


def mutate(obj: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    copied = copy.deepcopy(obj)
    change(copied)
    return copied


def head(cluster: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = cluster["headGroupSpec"]
    return group


def worker(cluster: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = cluster["workerGroupSpecs"][0]
    return group


def job_cluster(job: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = job["spec"]["rayClusterSpec"]
    return cluster


RAYJOB_RULES: list[tuple[str, Callable[[dict[str, Any]], Any], tuple[str, str]]] = [
    (
        "name over 47 characters",
        lambda j: j["metadata"].update(name="a" * 48),
        (
            "InvalidRayJobMetadata",
            "The RayJob metadata is invalid: RayJob name should be no more than 47 characters",
        ),
    ),
    (
        "name not a DNS-1035 label",
        lambda j: j["metadata"].update(name="9-lives-train-0123456789"),
        (
            "InvalidRayJobMetadata",
            f"The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: {DNS_1035}",
        ),
    ),
    (
        "suspend without shutdownAfterJobFinishes",
        lambda j: j["spec"].update(suspend=True, shutdownAfterJobFinishes=False, ttlSecondsAfterFinished=0),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed "
            "to be "
            "suspended",
        ),
    ),
    (
        "negative TTL",
        lambda j: j["spec"].update(ttlSecondsAfterFinished=-1),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer",
        ),
    ),
    (
        "a TTL without shutdownAfterJobFinishes",
        lambda j: j["spec"].update(shutdownAfterJobFinishes=False),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
            "TTLSecondsAfterFinished",
        ),
    ),
    (
        "deletion rules with shutdownAfterJobFinishes",
        lambda j: j["spec"].update(
            deletionStrategy={
                "deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED"}}]
            }
        ),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: spec.shutdownAfterJobFinishes and "
            "spec.deletionStrategy.deletionRules are "
            "mutually exclusive",
        ),
    ),
    (
        "neither a cluster spec nor a selector",
        lambda j: j["spec"].pop("rayClusterSpec"),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set",
        ),
    ),
    (
        "a cluster selector with a backoff limit",
        lambda j: (
            j["spec"].update(
                clusterSelector={"ray.io/cluster": "shared"}, backoffLimit=2, shutdownAfterJobFinishes=False
            )
            or j["spec"].pop("ttlSecondsAfterFinished")
        ),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode",
        ),
    ),
    (
        "an empty cluster name in the selector",
        lambda j: j["spec"].update(clusterSelector={"team": "a"}),
        ("InvalidRayJobSpec", "cluster name in ClusterSelector should not be empty"),
    ),
    (
        "InteractiveMode with a backoff limit",
        lambda j: j["spec"].update(submissionMode="InteractiveMode", backoffLimit=1),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: BackoffLimit is incompatible with InteractiveMode",
        ),
    ),
    (
        "SidecarMode with a submitter template",
        lambda j: j["spec"].update(
            submissionMode="SidecarMode", submitterPodTemplate={"spec": {"containers": []}}
        ),
        ("InvalidRayJobSpec", "Currently, SidecarMode doesn't support SubmitterPodTemplate"),
    ),
    (
        "SidecarMode with a restarting head",
        lambda j: (
            j["spec"].update(submissionMode="SidecarMode", submitterPodTemplate=None)  # not SidecarMode's
            or head(job_cluster(j))["template"]["spec"].update(restartPolicy="Always")
        ),
        ("InvalidRayJobSpec", "restartPolicy for head Pod should be Never or unset when using SidecarMode"),
    ),
    (
        "a head without containers",
        lambda j: head(job_cluster(j))["template"]["spec"].update(containers=[]),
        ("InvalidRayJobSpec", "The RayJob spec is invalid: headGroupSpec should have at least one container"),
    ),
    (
        "a worker group without containers",
        lambda j: worker(job_cluster(j))["template"]["spec"].update(containers=[]),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: workerGroupSpec should have at least one container",
        ),
    ),
    (
        "a worker group without maxReplicas, autoscaling off",
        lambda j: worker(job_cluster(j)).pop("maxReplicas"),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: worker group train must set both minReplicas and maxReplicas when "
            "autoscaling is disabled",
        ),
    ),
    (
        "negative minReplicas",
        lambda j: worker(job_cluster(j)).update(minReplicas=-1),
        ("InvalidRayJobSpec", "The RayJob spec is invalid: worker group train has negative minReplicas -1"),
    ),
    (
        "minReplicas over maxReplicas",
        lambda j: worker(job_cluster(j)).update(minReplicas=3, maxReplicas=2),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: worker group train has minReplicas 3 greater than maxReplicas 2",
        ),
    ),
    (
        "resources both in rayStartParams and in resources",
        lambda j: head(job_cluster(j)).update(resources={"CPU": "1"}),  # the head has num-cpus: "0"
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: resource fields should not be set in both rayStartParams and "
            "Resources "
            "for Head group; please use only one",
        ),
    ),
    (
        "labels in rayStartParams",
        lambda j: worker(job_cluster(j))["rayStartParams"].update(labels="a=b"),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: rayStartParams['labels'] is not supported for train group; please "
            "use "
            "the top-level Labels field instead",
        ),
    ),
    (
        "an invalid group label value",
        lambda j: worker(job_cluster(j)).update(labels={"tier": "-gpu"}),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: invalid label value for key 'tier' in train group: '-gpu', error: "
            "a valid "
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
            "start "
            "and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
            "used for "
            "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        ),
    ),
    (
        "idleTimeoutSeconds without autoscaler v2",
        lambda j: worker(job_cluster(j)).update(idleTimeoutSeconds=60),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: worker group train: idleTimeoutSeconds is set, but autoscaler v2 "
            "is not "
            "enabled. Please set .spec.autoscalerOptions.version to 'v2' (or set RAY_enable_autoscaler_v2 "
            "environment variable to 'true' in the head pod if using KubeRay < 1.4.0)",
        ),
    ),
    (
        "RAY_REDIS_ADDRESS without GCS fault tolerance",
        lambda j: head(job_cluster(j))["template"]["spec"]["containers"][0]["env"].append(
            {"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}
        ),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: RAY_REDIS_ADDRESS is set which implicitly enables GCS fault "
            "tolerance, "
            "but GcsFaultToleranceOptions is not set. Please set GcsFaultToleranceOptions to enable GCS "
            "fault "
            "tolerance",
        ),
    ),
    (
        "autoscaler v2 asked for with autoscaling off",
        lambda j: head(job_cluster(j))["template"]["spec"]["containers"][0]["env"].append(
            {"name": "RAY_enable_autoscaler_v2", "value": "1"}
        ),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: environment variable RAY_enable_autoscaler_v2 cannot be set to '1' "
            "when "
            "enableInTreeAutoscaling is false. Please set enableInTreeAutoscaling: true to use autoscaler v2",
        ),
    ),
    (
        "token auth on an old Ray",
        lambda j: job_cluster(j).update(authOptions={"mode": "token"}, rayVersion="2.40.0"),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: authOptions.mode is 'token' but minimum Ray version is 2.52.0, got "
            "2.40.0",
        ),
    ),
    (
        "K8s token auth",
        lambda j: job_cluster(j).update(authOptions={"mode": "token", "enableK8sTokenAuth": True}),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: K8s token auth mode is currently not supported for RayJob",
        ),
    ),
    (
        "a network policy (its feature gate is off in v1.7.0)",
        lambda j: job_cluster(j).update(networkPolicy={}),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: spec.networkPolicy requires the RayClusterNetworkPolicy feature "
            "gate to "
            "be enabled",
        ),
    ),
    (
        "a non-positive activeDeadlineSeconds",
        lambda j: j["spec"].update(activeDeadlineSeconds=0),
        ("InvalidRayJobSpec", "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer"),
    ),
    (
        "a non-positive preRunningDeadlineSeconds",
        lambda j: j["spec"].update(preRunningDeadlineSeconds=-5),
        (
            "InvalidRayJobSpec",
            "The RayJob spec is invalid: preRunningDeadlineSeconds must be a positive integer",
        ),
    ),
    (
        "a negative backoffLimit",
        lambda j: j["spec"].update(backoffLimit=-1),
        ("InvalidRayJobSpec", "The RayJob spec is invalid: backoffLimit must be a positive integer"),
    ),
    (
        "Waiting outside InteractiveMode",
        lambda j: j.update(status={"jobDeploymentStatus": "Waiting"}),
        (
            "InvalidRayJobStatus",
            "The RayJob status is invalid: JobDeploymentStatus cannot be `Waiting` when SubmissionMode is "
            "not "
            "InteractiveMode",
        ),
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"),
    [(change, problem) for _, change, problem in RAYJOB_RULES],
    ids=[r[0] for r in RAYJOB_RULES],
)
def test_each_rayjob_rule_fails_with_kuberays_message(
    change: Callable[[dict[str, Any]], Any], problem: tuple[str, str]
) -> None:
    broken = mutate(rendered_job(), change)
    assert rayjob_problem(broken) == problem
    assert validate_rayjob(broken) == problem[1]


def service_cluster(service: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = service["spec"]["rayClusterConfig"]
    return cluster


RAYSERVICE_RULES: list[tuple[str, Callable[[dict[str, Any]], Any], tuple[str, str]]] = [
    (
        "name over 47 characters",
        lambda s: s["metadata"].update(name="a-pool-name-of-forty-two-characters-abcdef-serve"),
        (
            "InvalidRayServiceMetadata",
            "The RayService metadata is invalid: RayService name should be no more than 47 characters",
        ),
    ),
    (
        "name not a DNS-1035 label",
        lambda s: s["metadata"].update(name="pool.v2-serve"),
        (
            "InvalidRayServiceMetadata",
            "The RayService metadata is invalid: RayService name should be a valid DNS1035 label: "
            f"{DNS_1035}",
        ),
    ),
    (
        "an invalid initializing timeout",
        lambda s: s["metadata"].update(annotations={"ray.io/initializing-timeout": "soon"}),
        (
            "InvalidRayServiceMetadata",
            "The RayService metadata is invalid: RayService annotations is invalid: annotation "
            "ray.io/initializing-timeout has invalid format: soon. Expected Go duration format (e.g., '5m', "
            "'1h') "
            "or positive integer seconds",
        ),
    ),
    (
        "a head without containers",
        lambda s: head(service_cluster(s))["template"]["spec"].update(containers=[]),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: headGroupSpec should have at least one container",
        ),
    ),
    (
        "minReplicas over maxReplicas",
        lambda s: worker(service_cluster(s)).update(minReplicas=9),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: worker group gpu has minReplicas 9 greater than maxReplicas 8",
        ),
    ),
    (
        "a worker group suspended with autoscaling on",
        lambda s: worker(service_cluster(s)).update(suspend=True),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: worker group gpu cannot be suspended with Autoscaler enabled",
        ),
    ),
    (
        "a head service with a name",
        lambda s: head(service_cluster(s)).update(headService={"metadata": {"name": "my-head"}}),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: spec.rayClusterConfig.headGroupSpec.headService.metadata.name "
            "should "
            "not be set",
        ),
    ),
    (
        "an unknown upgrade type",
        lambda s: s["spec"].update(upgradeStrategy={"type": "BlueGreen"}),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: Spec.UpgradeStrategy.Type value BlueGreen is invalid, valid "
            "options "
            "are NewClusterWithIncrementalUpgrade, NewCluster, or None",
        ),
    ),
    (
        "a negative cluster deletion delay",
        lambda s: s["spec"].update(rayClusterDeletionDelaySeconds=-1),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: Spec.RayClusterDeletionDelaySeconds should be a non-negative "
            "integer, "
            "got -1",
        ),
    ),
    (
        "an incremental upgrade without its options",
        lambda s: s["spec"].update(upgradeStrategy={"type": "NewClusterWithIncrementalUpgrade"}),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: ClusterUpgradeOptions are required for "
            "NewClusterWithIncrementalUpgrade",
        ),
    ),
    (
        "K8s token auth",
        lambda s: service_cluster(s).update(authOptions={"mode": "token", "enableK8sTokenAuth": True}),
        (
            "InvalidRayServiceSpec",
            "The RayService spec is invalid: K8s token auth mode is currently not supported for RayService",
        ),
    ),
]


@pytest.mark.parametrize(
    ("change", "problem"),
    [(change, problem) for _, change, problem in RAYSERVICE_RULES],
    ids=[r[0] for r in RAYSERVICE_RULES],
)
def test_each_rayservice_rule_fails_with_kuberays_message(
    change: Callable[[dict[str, Any]], Any], problem: tuple[str, str]
) -> None:
    broken = mutate(rendered_service(), change)
    assert rayservice_problem(broken) == problem
    assert validate_rayservice(broken) == problem[1]


def test_names_are_measured_as_kuberay_measures_them() -> None:
    assert MAX_RAYJOB_NAME_LENGTH == 47
    assert validate_rayjob(mutate(rendered_job(), lambda j: j["metadata"].update(name="a" * 47))) is None
    assert is_dns1035_label("a-b1") == [] and is_dns1035_label("a-b\n") != []  # Go's $ is the end of the text
    assert is_dns1035_label("x" * 64)[0] == "must be no more than 63 characters"


# --- the state machines, against kmock --------------------------------------------------


def store(kmock: Any, resource: str, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    kmock.objects[resource, meta["namespace"], meta["name"]] = {
        **obj,
        "metadata": {**meta, "resourceVersion": "1"},
    }


def stored(kmock: Any, resource: str, name: str, namespace: str = "agents") -> dict[str, Any] | None:
    try:
        history = kmock.objects[resource, namespace, name]
    except KeyError:
        return None
    return None if history.deleted else json.loads(json.dumps(dict(history.raw)))


def status_of(kmock: Any, resource: str, name: str) -> dict[str, Any]:
    found = stored(kmock, resource, name) or {}
    status: dict[str, Any] = found.get("status") or {}
    return status


def clusters(kmock: Any) -> list[str]:
    return sorted(
        k[2] for k in list(kmock.objects) if k[0] == "ray.io/v1/rayclusters" and stored(kmock, k[0], k[2])
    )


JOBS, SERVICES = "ray.io/v1/rayjobs", "ray.io/v1/rayservices"


async def test_a_rayjob_runs_through_kuberays_states_and_its_cluster_goes_after_its_ttl(kmock: Any) -> None:
    job = rendered_job()
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, JOBS, job)
        await kuberay.reconcile()
        initializing = status_of(kmock, JOBS, name)
        assert initializing["jobDeploymentStatus"] == "Initializing" and "jobStatus" not in initializing
        assert initializing["rayClusterName"].startswith(f"{name}-") and initializing["jobId"].startswith(
            f"{name}-"
        )
        assert parse_timestamp(initializing["startTime"]) == kuberay.clock.now()
        assert "ray.io/rayjob-finalizer" in (stored(kmock, JOBS, name) or {})["metadata"]["finalizers"]
        cluster = initializing["rayClusterName"]
        assert len(cluster) <= 53  # MaxRayClusterNameLength: the 47 characters leave room for "-xxxxx"

        await kuberay.reconcile()  # the cluster is created; its pods are not up yet
        assert clusters(kmock) == [cluster]
        owner = (stored(kmock, "ray.io/v1/rayclusters", cluster) or {})["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("RayJob", name)
        assert status_of(kmock, JOBS, name)["jobDeploymentStatus"] == "Initializing"

        await kuberay.reconcile()  # the cluster is ready: the submitter submits the job
        running = status_of(kmock, JOBS, name)
        assert running["jobDeploymentStatus"] == "Running"
        assert running["dashboardURL"] == f"{cluster}-head-svc.agents.svc.cluster.local:8265"

        await kuberay.reconcile()
        pending = status_of(kmock, JOBS, name)
        assert pending["jobStatus"] == "PENDING"
        assert pending["message"] == (
            "Job has not started yet. It may be waiting for resources (CPUs, GPUs, memory, custom "
            "resources) to "
            "become available."
        )
        await kuberay.settle()
        assert status_of(kmock, JOBS, name)["jobStatus"] == "RUNNING"
        assert status_of(kmock, JOBS, name)["jobDeploymentStatus"] == "Running"  # until Ray says it ended

        ended_at = kuberay.advance(42)
        kuberay.finish_job(name)
        await kuberay.settle()
        done = status_of(kmock, JOBS, name)
        assert (done["jobDeploymentStatus"], done["jobStatus"], done["message"]) == (
            "Complete",
            "SUCCEEDED",
            "Job finished successfully.",
        )
        assert "reason" not in done and (done["succeeded"], done["failed"]) == (1, 0)
        assert parse_timestamp(done["endTime"]) == ended_at == parse_timestamp(done["rayJobInfo"]["endTime"])

        ttl = job["spec"]["ttlSecondsAfterFinished"]
        kuberay.advance(ttl - 1)
        await kuberay.settle()
        assert clusters(kmock) == [cluster]
        kuberay.advance(1)
        await kuberay.settle()
        assert clusters(kmock) == []
        assert kuberay.deletions[("RayCluster", "agents", cluster)] - ended_at == timedelta(seconds=ttl)
        assert (
            stored(kmock, JOBS, name) is not None
        )  # v1.7.0 keeps the RayJob (DELETE_RAYJOB_CR_AFTER_JOB_FINISHES)
        assert [e.reason for e in kuberay.events_for(name)] == [
            "CreatedRayCluster",
            "CreatedRayJobSubmitter",
            "DeletedRayCluster",
        ]


async def test_a_failed_ray_job_fails_the_rayjob_with_rays_message(kmock: Any) -> None:
    job = rendered_job()
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, JOBS, job)
        kuberay.finish_job(name, "FAILED", exit_code=2)
        await kuberay.settle()
        failed = status_of(kmock, JOBS, name)
        assert (failed["jobDeploymentStatus"], failed["jobStatus"], failed["reason"]) == (
            "Failed",
            "FAILED",
            "AppFailed",
        )
        assert failed["message"] == "Job entrypoint command failed with exit code 2. No logs available."
        assert failed["failed"] == 1  # backoffLimit 0: no retry


async def test_an_invalid_rayjob_is_stored_then_fails_validation_for_good(kmock: Any) -> None:
    job = mutate(
        rendered_job(),
        lambda j: j["metadata"].update(name="a-specialist-name-of-forty-chars-abcdefg-train-0123456789"),
    )
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, JOBS, job)
        kuberay.finish_job(name)  # Ray never gets to run it
        for _ in range(5):
            await kuberay.reconcile()
        message = "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"
        assert status_of(kmock, JOBS, name) == {
            "jobDeploymentStatus": "ValidationFailed",
            "reason": "ValidationFailed",
            "message": message,
        }
        assert clusters(kmock) == []
        [event] = kuberay.events_for(name)
        assert (event.type, event.reason, event.action, event.note) == (
            "Warning",
            "InvalidRayJobMetadata",
            "Validate",
            f"agents/{name}: {message}",
        )


async def test_the_operators_job_state_reads_kuberays_failures_as_failures(kmock: Any) -> None:
    """Every terminal state KubeRay writes without a success is a failure, with KubeRay's words."""
    from protege.flywheel.specialist import JobPhase
    from protege.operator.flywheel_io import job_state

    refused = mutate(rendered_job("refused"), lambda j: j["metadata"].update(name="x" * 48))
    late = mutate(rendered_job("late"), lambda j: j["spec"].update(activeDeadlineSeconds=600))
    broken, fine = rendered_job("broken"), rendered_job("fine")
    async with KubeRayDouble(kmock, background=False) as kuberay:
        for job in (refused, late, broken, fine):
            store(kmock, JOBS, job)
        kuberay.finish_job(
            broken["metadata"]["name"], "FAILED", message="Job entrypoint command failed with exit code 2"
        )
        kuberay.finish_job(fine["metadata"]["name"])
        await kuberay.settle()
        kuberay.advance(600)
        await kuberay.settle()
        states = {
            job["metadata"]["name"]: job_state(stored(kmock, JOBS, job["metadata"]["name"]))
            for job in (refused, late, broken, fine)
        }
    assert states[fine["metadata"]["name"]].phase is JobPhase.SUCCEEDED
    for job, words in [
        (refused, "RayJob name should be no more than 47 characters"),
        (late, "The RayJob has passed the activeDeadlineSeconds."),
        (broken, "exit code 2"),
    ]:
        state = states[job["metadata"]["name"]]
        assert state.phase is JobPhase.FAILED, (job["metadata"]["name"], state)
        assert words in state.message


async def test_a_job_past_its_active_deadline_fails_and_is_not_retried(kmock: Any) -> None:
    job = mutate(rendered_job(), lambda j: j["spec"].update(activeDeadlineSeconds=600, backoffLimit=3))
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, JOBS, job)
        await kuberay.settle()
        start = parse_timestamp(status_of(kmock, JOBS, name)["startTime"])
        kuberay.advance(599)
        await kuberay.settle()
        assert status_of(kmock, JOBS, name)["jobDeploymentStatus"] == "Running"
        kuberay.advance(1)
        await kuberay.settle()
        failed = status_of(kmock, JOBS, name)
        assert (failed["jobDeploymentStatus"], failed["reason"]) == ("Failed", "DeadlineExceeded")
        stamp = start.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
        assert failed["message"] == (
            f"The RayJob has passed the activeDeadlineSeconds. StartTime: {stamp}. ActiveDeadlineSeconds: 600"
        )
        assert failed["jobStatus"] == "RUNNING"  # the Ray job's last word; the deployment gave up on it


async def test_a_failed_job_is_retried_on_a_new_cluster_up_to_its_backoff_limit(kmock: Any) -> None:
    job = mutate(rendered_job(), lambda j: j["spec"].update(backoffLimit=1))
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, JOBS, job)
        kuberay.finish_job(name, "FAILED")
        await kuberay.settle()
        first = kuberay.deletions
        assert len([k for k in first if k[0] == "RayCluster"]) == 1  # the first try's cluster, at the retry
        final = status_of(kmock, JOBS, name)
        assert (final["jobDeploymentStatus"], final["failed"]) == ("Failed", 2)
        assert len(clusters(kmock)) == 1 and clusters(kmock)[0] == final["rayClusterName"]


async def test_kuberay_can_delete_the_rayjob_itself_after_its_ttl(kmock: Any) -> None:
    job = rendered_job()
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False, delete_rayjob_after_job_finishes=True) as kuberay:
        store(kmock, JOBS, job)
        kuberay.finish_job(name)
        await kuberay.settle()
        kuberay.advance(job["spec"]["ttlSecondsAfterFinished"])
        await kuberay.settle()
        assert stored(kmock, JOBS, name) is None  # its finalizer released, then gone
        assert clusters(kmock) == []  # garbage collected with it
        assert ("RayJob", "agents", name) in kuberay.deletions


async def test_a_rayservice_deploys_its_serve_app_and_becomes_ready(kmock: Any) -> None:
    service = rendered_service()
    name = service["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, SERVICES, service)
        await kuberay.reconcile()  # the finalizer first
        assert (stored(kmock, SERVICES, name) or {})["metadata"]["finalizers"] == [
            "ray.io/rayservice-finalizer"
        ]
        await kuberay.reconcile()
        initializing = status_of(kmock, SERVICES, name)
        assert "serviceStatus" not in initializing
        assert [(c["type"], c["status"], c["reason"]) for c in initializing["conditions"]] == [
            ("Ready", "False", "Initializing"),
            ("UpgradeInProgress", "False", "Initializing"),
        ]
        cluster = initializing["pendingServiceStatus"]["rayClusterName"]
        for _ in range(3):  # the cluster comes up, the config is submitted, the app deploys
            await kuberay.reconcile()
        deploying = status_of(kmock, SERVICES, name)["pendingServiceStatus"]["applicationStatuses"]
        assert deploying == {
            "smollm2-pool": {
                "status": "DEPLOYING",
                "serveDeploymentStatuses": {"PoolEngine": {"status": "UPDATING"}},
            }
        }
        await kuberay.settle()
        ready = status_of(kmock, SERVICES, name)
        assert ready["serviceStatus"] == "Running" and ready["numServeEndpoints"] == 2  # head + one worker
        assert (
            ready["activeServiceStatus"]["rayClusterName"] == cluster
            and "rayClusterName" not in ready["pendingServiceStatus"]
        )
        assert ready["activeServiceStatus"]["applicationStatuses"]["smollm2-pool"]["status"] == "RUNNING"
        assert [(c["type"], c["status"], c["reason"], c["message"]) for c in ready["conditions"]] == [
            ("Ready", "True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0"),
            (
                "UpgradeInProgress",
                "False",
                "NoPendingCluster",
                "Active Ray cluster exists and no pending Ray cluster",
            ),
        ]


async def test_an_invalid_rayservice_is_refused_in_its_ready_condition(kmock: Any) -> None:
    service = rendered_service("a-pool-name-of-forty-two-characters-abcdef")
    service["metadata"]["name"] = (
        "a-pool-name-of-forty-two-characters-abcdef-serve"  # today's name, 48 characters
    )
    name = service["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, SERVICES, service)
        await kuberay.settle()
        status = status_of(kmock, SERVICES, name)
        message = "The RayService metadata is invalid: RayService name should be no more than 47 characters"
        [ready] = status["conditions"]
        assert (ready["type"], ready["status"], ready["reason"], ready["message"]) == (
            "Ready",
            "False",
            "ValidationFailed",
            message,
        )
        assert "serviceStatus" not in status and "activeServiceStatus" not in status and clusters(kmock) == []
        assert [e.reason for e in kuberay.events_for(name)] == ["InvalidRayServiceMetadata"]


async def test_a_serve_app_that_fails_says_so_as_kuberay_reports_it(kmock: Any) -> None:
    service = rendered_service()
    name = service["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, SERVICES, service)
        kuberay.fail_serve_app(name, "DEPLOY_FAILED", message="ValueError: maxLoraRank 64 > 32")
        await kuberay.settle()
        status = status_of(kmock, SERVICES, name)
        app = status["pendingServiceStatus"]["applicationStatuses"]["smollm2-pool"]
        assert app == {
            "status": "DEPLOY_FAILED",
            "message": "Deploying app 'smollm2-pool' failed with exception:\nValueError: maxLoraRank 64 > 32",
        }
        assert "serviceStatus" not in status and status["conditions"][0]["reason"] == "Initializing"

        kuberay.heal_serve_app(name)
        await kuberay.settle()
        assert status_of(kmock, SERVICES, name)["serviceStatus"] == "Running"

        kuberay.fail_serve_app(name, "UNHEALTHY", message="replica died")
        await kuberay.settle()
        status = status_of(kmock, SERVICES, name)
        app = status["activeServiceStatus"]["applicationStatuses"]["smollm2-pool"]
        assert app == {
            "status": "UNHEALTHY",
            "message": "The deployments ['PoolEngine'] are UNHEALTHY.",
            "serveDeploymentStatuses": {"PoolEngine": {"status": "UNHEALTHY", "message": "replica died"}},
        }
        assert status["serviceStatus"] == "Running"  # KubeRay: the serve Service still has endpoints


async def test_a_changed_cluster_spec_gets_a_new_cluster_and_the_old_one_goes_after_the_delay(
    kmock: Any,
) -> None:
    service = rendered_service()
    name = service["metadata"]["name"]
    async with KubeRayDouble(kmock, background=False) as kuberay:
        store(kmock, SERVICES, service)
        await kuberay.settle()
        [old] = clusters(kmock)
        kmock.objects[SERVICES, "agents", name].patch(
            {"spec": {"rayClusterConfig": {"rayVersion": "2.61.0"}}}
        )
        await kuberay.settle()
        status = status_of(kmock, SERVICES, name)
        new = status["activeServiceStatus"]["rayClusterName"]
        assert new != old and clusters(kmock) == sorted([old, new]) and status["serviceStatus"] == "Running"
        switched = kuberay.clock.now()
        kuberay.advance(60)
        await kuberay.settle()
        assert old in clusters(kmock)  # rayClusterDeletionDelaySeconds: 60 s, then it goes
        kuberay.advance(1)
        await kuberay.settle()
        assert clusters(kmock) == [new]
        assert kuberay.deletions[("RayCluster", "agents", old)] - switched == timedelta(seconds=61)


async def test_with_kuberays_crds_an_object_the_api_server_would_refuse_fails_the_test(kmock: Any) -> None:
    from protege.crds.validate import CrdCatalogue

    crds = CrdCatalogue.from_paths(sorted(KUBERAY_CRDS.glob("*.yaml")))
    job = mutate(rendered_job(), lambda j: j["spec"].update(backoffLimit="zero"))
    async with KubeRayDouble(kmock, background=False, crds=crds) as kuberay:
        store(kmock, JOBS, job)
        await kuberay.settle()
        assert status_of(kmock, JOBS, job["metadata"]["name"]) == {}  # never reconciled
        with pytest.raises(
            KubeRayDoubleError, match=r"RayJob agents/.* would be refused by the API server.*"
        ):
            kuberay.check()  # what ending the block would raise
        kuberay.refused.clear()


async def test_the_double_runs_in_the_background(kmock: Any) -> None:
    import asyncio

    job = rendered_job()
    name = job["metadata"]["name"]
    async with KubeRayDouble(kmock, interval=0.01, job_outcome=lambda _: ("SUCCEEDED", None)):
        store(kmock, JOBS, job)
        for _ in range(500):
            if status_of(kmock, JOBS, name).get("jobDeploymentStatus") == "Complete":
                break
            await asyncio.sleep(0.01)
        assert status_of(kmock, JOBS, name)["jobStatus"] == "SUCCEEDED"
