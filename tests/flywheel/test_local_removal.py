"""On one machine as on a cluster (the lifecycle both drivers share, :mod:`protege.flywheel.lifecycle`):
an invalid spec and a missing pool become the Specialist's status, a status is written only when a pass
changed it, and a Specialist whose manifest is removed is deleted: out of the routes, its adapters and job
results out of the store, its jobs stopped and forgotten, then its status gone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protege.api.calls import CallRecord
from protege.api.jobs import RESULTS_AREA
from protege.api.routes import SpecialistRoute
from protege.api.specialist import DeletionPolicy, SpecialistPhase, SpecialistSpec, SpecialistStatus
from protege.flywheel.data import StoreData
from protege.flywheel.lifecycle import delete, deletion_policy
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, Pass, RayJobs, RouteFile
from protege.flywheel.specialist import PoolFacts
from protege.store.artifacts import ArtifactStore
from protege.testing.plugin import seed_task

SPEC = SpecialistSpec.model_validate(
    {"pool": "local", "task": {"id": "task-1", "tenant": "acme"}, "data": {"minExamples": 20}}
)


class FakeRay:
    """Ray's JobSubmissionClient as far as the driver uses it: jobs run until the test ends them; a
    stopped job ends at the next look."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}

    def submit_job(self, *, submission_id: str, **options: Any) -> str:
        self.jobs.setdefault(submission_id, {"status": "RUNNING", **options})
        return submission_id

    def get_job_info(self, name: str) -> Any:
        if name not in self.jobs:
            raise RuntimeError(f"Job {name} does not exist")
        return SimpleNamespace(status=SimpleNamespace(value=self.jobs[name]["status"]), message="")

    def list_jobs(self) -> list[Any]:
        found = []
        for name, job in self.jobs.items():
            if job["status"] == "STOPPING":
                job["status"] = "STOPPED"
            status = SimpleNamespace(value=job["status"])
            found.append(SimpleNamespace(submission_id=name, status=status, metadata=job.get("metadata")))
        return found

    def stop_job(self, name: str) -> bool:
        self.jobs[name]["status"] = "STOPPING"
        return True

    def delete_job(self, name: str) -> bool:
        return self.jobs.pop(name, None) is not None


class QuietIO(LocalFlywheelIO):
    """No call log: no calls yet."""

    async def records(self, tenant: str, since: datetime | None) -> Sequence[CallRecord]:
        return []


def local_driver(state: Path, store: ArtifactStore, ray: FakeRay, pool_name: str = "local") -> LocalDriver:
    jobs = object.__new__(RayJobs)
    jobs.client, jobs.job_cpus, jobs.yield_cpus = ray, None, False  # type: ignore[assignment]
    io = QuietIO(StoreData(store, ttl_seconds=0), jobs, RouteFile(state / "routes.json"), "nats://unused")
    return LocalDriver(state / "flywheel", io, PoolFacts("smollm2-135m", 16), pool_name=pool_name)


async def test_a_removed_manifest_takes_its_route_results_jobs_and_status_away(tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 40, task_id="task-1")
    ray = FakeRay()
    driver = local_driver(tmp_path, store, ray)
    routes = driver.io.route_file
    for name in ("kept", "gone"):
        driver.add(name, SPEC)
    first = await driver.step()
    assert {n: s.phase for n, s in first.statuses.items()} == {"kept": SpecialistPhase.TRAINING} | {
        "gone": SpecialistPhase.TRAINING
    }
    job = first.statuses["gone"].versions[-1].job_name
    assert job is not None and ray.jobs[job]["status"] == "RUNNING"
    store.put_artifact("adapter", "gone", {"adapter_config.json": b"{}"})
    store.put_object(RESULTS_AREA, job, b"{}")
    (tmp_path / "flywheel" / "specialists" / "gone.yaml").unlink()  # `kubectl delete`, locally

    second = await driver.step()
    assert second.removed == ["gone"] and [r.specialist for r in routes.read().routes] == ["kept"]
    assert store.versions("adapter", "gone") == [] and not store.has_object(RESULTS_AREA, job)
    assert ray.jobs[job]["status"] == "STOPPING"  # stopped, as its RayJob goes with it on a cluster
    assert (tmp_path / "flywheel" / "status" / "gone.json").exists()  # until no job of it is left

    third = await driver.step()
    assert third.removed == ["gone"] and job not in ray.jobs
    assert sorted(p.stem for p in (tmp_path / "flywheel" / "status").glob("*.json")) == ["kept"]
    assert (await driver.step()).removed == []  # nothing left to do


async def test_a_retain_policy_keeps_the_adapters_and_reports_of_a_removed_specialist(tmp_path: Path) -> None:
    """spec.deletionPolicy Retain: the route goes, the jobs are stopped and their results deleted, the
    adapters and reports stay; the policy of the last valid manifest counts (remembered once it is gone),
    and switching back to Delete deletes them."""
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 40, task_id="task-1")
    ray = FakeRay()
    driver = local_driver(tmp_path, store, ray)
    retain = SPEC.model_copy(update={"deletion_policy": DeletionPolicy.RETAIN})
    driver.add("kept", retain)
    driver.add("switched", retain)
    first = await driver.step()
    job = first.statuses["kept"].versions[-1].job_name
    assert job is not None
    for name in ("kept", "switched"):
        store.put_artifact("adapter", name, {"adapter_config.json": b"{}"})
        store.put_artifact("report", name, {"report.json": b"{}"})
    store.put_object(RESULTS_AREA, job, b"{}")
    driver.add("switched", SPEC)  # back to Delete before it is removed
    await driver.step()
    for name in ("kept", "switched"):
        (tmp_path / "flywheel" / "specialists" / f"{name}.yaml").unlink()

    second = await driver.step()
    assert second.removed == ["kept", "switched"] and driver.io.route_file.read().routes == []
    assert len(store.versions("adapter", "kept")) == 1 and len(store.versions("report", "kept")) == 1
    assert store.versions("adapter", "switched") == [] and store.versions("report", "switched") == []
    assert not store.has_object(RESULTS_AREA, job) and ray.jobs[job]["status"].startswith("STOP")
    await driver.step()  # the stopped jobs are gone: the statuses and the remembered policy go
    assert list((tmp_path / "flywheel" / "status").glob("*.json")) == []
    assert list((tmp_path / "flywheel" / "retain").iterdir()) == []
    assert len(store.versions("adapter", "kept")) == 1


@pytest.mark.parametrize("policy", list(DeletionPolicy))
async def test_the_shared_delete_follows_the_deletion_policy(tmp_path: Path, policy: DeletionPolicy) -> None:
    """:func:`protege.flywheel.lifecycle.delete`, which both drivers call: the route and the recorded
    jobs' results go either way; the adapters and reports only with Delete."""
    store = ArtifactStore((tmp_path / "store").as_uri())
    routes = RouteFile(tmp_path / "routes.json")
    await routes.update("gone", SpecialistRoute(specialist="gone", task_id="task-1", tenant="acme"))
    store.put_artifact("adapter", "gone", {"adapter_config.json": b"{}"})
    store.put_artifact("report", "gone", {"report.json": b"{}"})
    store.put_artifact("adapter", "gone-too", {"adapter_config.json": b"{}"})  # a name it prefixes
    store.put_object(RESULTS_AREA, "gone-train-1", b"{}")
    recorded = SpecialistStatus.model_validate(
        {
            "versions": [
                {"state": "Serving", "jobName": "gone-train-1"},
                {"state": "Training", "jobName": "gone-x"},
            ]
        }
    )

    await delete("gone", recorded, routes=routes, store=store, policy=policy)
    await delete("gone", recorded, routes=routes, store=store, policy=policy)  # safe to repeat
    assert routes.read().for_specialist("gone") is None and not store.has_object(RESULTS_AREA, "gone-train-1")
    kept = 0 if policy is DeletionPolicy.DELETE else 1
    assert len(store.versions("adapter", "gone")) == kept and len(store.versions("report", "gone")) == kept
    assert len(store.versions("adapter", "gone-too")) == 1


def test_the_deletion_policy_is_read_from_a_raw_spec() -> None:
    assert deletion_policy({"deletionPolicy": "Retain", "training": {"rank": 0}}) is DeletionPolicy.RETAIN
    assert deletion_policy({}) is deletion_policy(None) is DeletionPolicy.DELETE
    assert SpecialistSpec.model_validate(SPEC.to_kube()).deletion_policy is DeletionPolicy.DELETE


async def test_an_invalid_spec_and_a_missing_pool_are_in_the_status_which_is_written_when_it_changes(
    tmp_path: Path,
) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 40, task_id="task-1")
    driver = local_driver(tmp_path, store, FakeRay(), pool_name="local")
    specialists = tmp_path / "flywheel" / "specialists"
    (specialists / "broken.yaml").write_text(
        "metadata: {name: broken}\nspec: {pool: local, training: {rank: 0}}\n"
    )
    driver.add("orphan", SPEC.model_copy(update={"pool": "elsewhere"}))
    driver.add("trains", SPEC)

    first = await driver.step()
    broken, orphan = driver.status("broken"), driver.status("orphan")
    assert broken == first.statuses["broken"] and "spec.training.rank" in first.invalid["broken"]
    assert broken.phase is SpecialistPhase.FAILED
    assert [(c.type, c.reason) for c in broken.conditions if c.status == "True"] == [
        ("Stalled", "InvalidSpec")
    ]
    assert "spec.training.rank" in next(c.message for c in broken.conditions if c.type == "Ready")
    assert orphan.phase is SpecialistPhase.PENDING
    ready = next(c for c in orphan.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "PoolNotFound") and "'elsewhere'" in ready.message
    assert [(c.type, c.reason) for c in orphan.conditions if c.status == "True"] == [
        ("Reconciling", "PoolNotFound")
    ]

    # A pass that changes nothing writes nothing (as the operator patches no unchanged status).
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "flywheel" / "status").glob("*.json")}
    assert sorted(written) == ["broken.json", "orphan.json", "trains.json"]
    await driver.step()
    assert {
        p.name: p.stat().st_mtime_ns for p in (tmp_path / "flywheel" / "status").glob("*.json")
    } == written

    # Fixed: the next pass drives it.
    driver.add("orphan", SPEC)
    assert driver.status("orphan") == orphan
    assert (await driver.step()).statuses["orphan"].phase is SpecialistPhase.TRAINING


async def test_forget_removed_alone_takes_a_route_and_status_away(tmp_path: Path) -> None:
    driver = local_driver(tmp_path, ArtifactStore((tmp_path / "store").as_uri()), FakeRay())
    routes = driver.io.route_file
    for name in ("kept", "gone"):
        driver.add(name, SPEC)
        await routes.update(
            name, SpecialistRoute(specialist=name, tenant="acme", task_id="task-1", active="v1")
        )
        (tmp_path / "flywheel" / "status" / f"{name}.json").write_text(SpecialistStatus().model_dump_json())
    (tmp_path / "flywheel" / "specialists" / "gone.yaml").unlink()

    done = Pass()
    await driver.forget_removed(set(driver.specialists()), done)
    assert done.removed == ["gone"] and [r.specialist for r in routes.read().routes] == ["kept"]
    assert sorted(p.stem for p in (tmp_path / "flywheel" / "status").glob("*.json")) == ["kept"]


async def test_a_deleted_or_edited_routing_file_gets_the_routes_the_statuses_imply(tmp_path: Path) -> None:
    """The routing file is derived from the Specialists' statuses: removed (or a route edited), the next
    pass writes each route again with the versions its status names, not the teacher's alone."""
    store = ArtifactStore((tmp_path / "store").as_uri())
    seed_task(store, "extract", 40, task_id="task-1")
    driver = local_driver(tmp_path, store, FakeRay())
    routes = driver.io.route_file
    driver.add("serving", SPEC)
    serving = SpecialistStatus.model_validate(
        {
            "activeVersion": "v2",
            "previousVersion": "v1",
            "versions": [
                {"version": "v1", "state": "Retired", "examples": 40},
                {"version": "v2", "state": "Serving", "examples": 40},
            ],
        }
    )
    await driver.status_file("serving").save(serving)
    first = await driver.step()
    assert first.statuses["serving"].phase is SpecialistPhase.SERVING
    written = routes.read().for_specialist("serving")
    assert written is not None and (written.active, written.previous) == ("v2", "v1")

    routes.path.unlink()  # deleted out of band
    await driver.step()
    assert routes.read().for_specialist("serving") == written

    await routes.update("serving", written.model_copy(update={"active": None, "previous": None}))
    await driver.step()  # edited out of band
    assert routes.read().for_specialist("serving") == written
