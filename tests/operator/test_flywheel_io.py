"""The flywheel's I/O on Kubernetes: a RayJob's status as the flywheel reads it (every terminal state
without a success is a failure), and the pool's cap on training jobs running at once."""

from __future__ import annotations

from typing import Any

import pytest

from protege.api.pool import SpecialistPoolSpec
from protege.api.specialist import TrainingSpec
from protege.flywheel.data import StoreData
from protege.flywheel.specialist import JobPhase
from protege.operator.flywheel_io import KubeFlywheelIO, RouteBook, job_state
from protege.operator.platform import Owner, Platform
from protege.store.artifacts import ArtifactStore


def ray_job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sql-writer-train-0123456789"}, "status": status}


@pytest.mark.parametrize(
    ("status", "phase", "message"),
    [
        ({}, JobPhase.RUNNING, ""),  # just created: KubeRay has not looked at it yet
        ({"jobDeploymentStatus": "Initializing"}, JobPhase.RUNNING, ""),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, JobPhase.RUNNING, ""),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, JobPhase.SUCCEEDED, ""),
        (
            {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "exit code 2"},
            JobPhase.FAILED,
            "RayJob FAILED: exit code 2",
        ),
        (  # today's KubeRay refusing a name: the job never runs, it must not stay "Training" forever
            {
                "jobDeploymentStatus": "ValidationFailed",
                "reason": "ValidationFailed",
                "message": "The RayJob metadata is invalid: RayJob name should be no more than 47 characters",
            },
            JobPhase.FAILED,
            "RayJob ValidationFailed: The RayJob metadata is invalid: RayJob name should be no more than 47 "
            "characters",
        ),
        (
            {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "past 21600 s"},
            JobPhase.FAILED,
            "RayJob Failed: DeadlineExceeded: past 21600 s",
        ),
    ],
)
def test_terminal_states_without_a_success_are_failures_with_kuberays_words(
    status: dict[str, Any], phase: JobPhase, message: str
) -> None:
    state = job_state(ray_job(**status))
    assert state.phase is phase
    assert state.message == message or phase is not JobPhase.FAILED
    assert job_state(None).phase is JobPhase.MISSING


class FakeKube:
    """The RayJobs a namespace holds, listed by label as the API server would."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.deleted: list[str] = []

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append(name)
        self.jobs = [j for j in self.jobs if j["metadata"].get("name") != name]
        return True

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str]
    ) -> list[dict[str, Any]]:
        assert (api_version, kind) == ("ray.io/v1", "RayJob")
        return [
            j
            for j in self.jobs
            if j["metadata"]["namespace"] == namespace
            and all(j["metadata"]["labels"].get(k) == v for k, v in labels.items())
        ]


def pool_job(pool: str, state: str, namespace: str = "agents", **status: str) -> dict[str, Any]:
    labels = {"protege.dev/pool": pool}
    status = {"jobDeploymentStatus": state, **status}
    return {"metadata": {"namespace": namespace, "labels": labels}, "status": status}


async def test_a_pool_runs_at_most_its_max_training_jobs_at_once() -> None:
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t/v1", "model": "big"}}
    )
    assert pool.max_training_jobs == 2

    def io(jobs: list[dict[str, Any]]) -> KubeFlywheelIO:
        return KubeFlywheelIO(
            StoreData(ArtifactStore("file:///nonexistent")),
            FakeKube(jobs),  # type: ignore[arg-type]
            RouteBook(None),  # type: ignore[arg-type]
            Platform(),
            owner=Owner("Specialist", "s", "agents", "u-s"),
            pool=Owner("SpecialistPool", "gpu-pool", "agents", "u-p"),
            pool_spec=pool,
        )

    training = TrainingSpec()
    others = [pool_job("other-pool", "Running"), pool_job("gpu-pool", "Running", namespace="elsewhere")]
    one = [pool_job("gpu-pool", "Running"), pool_job("gpu-pool", "Complete", jobStatus="SUCCEEDED")]
    assert await io(others + one).training_slot_free(training)  # finished and other pools' jobs do not count
    assert not await io([*one, pool_job("gpu-pool", "Initializing")]).training_slot_free(training)


async def test_finished_jobs_past_the_status_window_are_deleted_running_and_recorded_ones_kept() -> None:
    """KubeRay v1.7 deletes a finished job's cluster, never the RayJob: one per training would pile up."""

    def job(name: str, **status: str) -> dict[str, Any]:
        labels = {"protege.dev/specialist": "s"}
        return {"metadata": {"name": name, "namespace": "agents", "labels": labels}, "status": status}

    kube = FakeKube(
        [
            job("s-train-old", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"),
            job("s-train-refused", jobDeploymentStatus="ValidationFailed"),
            job("s-train-recorded", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"),
            job("s-train-running", jobDeploymentStatus="Running", jobStatus="RUNNING"),
        ]
    )
    pool = SpecialistPoolSpec.model_validate(
        {"baseModel": {"source": "smollm2-135m"}, "teacher": {"url": "http://t/v1", "model": "big"}}
    )
    io = KubeFlywheelIO(
        StoreData(ArtifactStore("file:///nonexistent")),
        kube,  # type: ignore[arg-type]
        RouteBook(None),  # type: ignore[arg-type]
        Platform(),
        owner=Owner("Specialist", "s", "agents", "u-s"),
        pool=Owner("SpecialistPool", "gpu-pool", "agents", "u-p"),
        pool_spec=pool,
    )
    assert await io.jobs.forget_finished("s", {"s-train-recorded"}) == ["s-train-old", "s-train-refused"]
    assert sorted(j["metadata"]["name"] for j in kube.jobs) == ["s-train-recorded", "s-train-running"]
