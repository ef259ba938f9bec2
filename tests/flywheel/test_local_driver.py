"""The local flywheel driver: a real local Ray trains, the routing file gets a shadow candidate.

The base model is ``tiny_llama`` (tests/conftest.py): the driver's path is under test, not what
the adapter learns (real SmolLM2 training: tests/training/test_job.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from protege.api.specialist import SpecialistPhase, SpecialistSpec, VersionState
from protege.capture.access import OPERATOR
from protege.flywheel.data import StoreData
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, RayJobs, RouteFile
from protege.flywheel.specialist import PoolFacts
from protege.store.artifacts import ArtifactStore
from protege.testing.plugin import seed_task

pytestmark = pytest.mark.slow

SPEC = SpecialistSpec.model_validate(
    {
        "pool": "local",
        "task": {"id": "t-intent", "tenant": "acme"},
        "data": {"minExamples": 20},
        "training": {
            "rank": 8, "epochs": 1, "batchSize": 8, "learningRate": 2e-3, "maxSeqLen": 512,
            "resources": {"gpu": 0},
        },
        "evaluation": {"minRelativeToTeacher": 0.0},
    }
)  # fmt: skip


async def test_the_driver_trains_once_and_puts_the_candidate_in_shadow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama: Path, nats_server: Any
) -> None:
    from protege.services.ray import LocalRay

    store = ArtifactStore((tmp_path / "store").as_uri())
    monkeypatch.setenv("PROTEGE_ARTIFACT_STORE", store.url)
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    seed_task(store, "intent", 100, task_id="t-intent")
    routes = RouteFile(tmp_path / "routes.json")
    pool = PoolFacts(base_model=tiny_llama.as_uri(), max_lora_rank=16)  # the job's path, not its quality
    options = {"max_steps": 4, "max_new_tokens": 8, "few_shot": 0}

    with LocalRay(tmp_path / "ray", num_cpus=2) as ray:
        jobs = RayJobs(ray.address, ray.headers, job_cpus=1)  # one job at a time

        def driver() -> LocalDriver:  # a new one each time: a restarted `protege up`
            io = LocalFlywheelIO(StoreData(store), jobs, routes, nats_server.endpoint(OPERATOR))
            return LocalDriver(tmp_path / "flywheel", io, pool, job_options=options)

        driver().add("intent-router", SPEC)
        first = await driver().step()
        assert [event.reason for _, event in first.events] == ["TrainingStarted"]
        job = first.statuses["intent-router"].versions[-1].job_name
        assert job is not None and routes.read().for_specialist("intent-router") is not None
        assert not jobs.slot_free(SPEC.training)  # a second job would queue behind it

        for _ in range(300):
            status = (await driver().step()).statuses["intent-router"]
            if status.phase is not SpecialistPhase.TRAINING:
                break
            await asyncio.sleep(2)
        assert [j.submission_id for j in jobs.client.list_jobs()] == [job]  # restarts did not resubmit
        assert jobs.slot_free(SPEC.training)

    assert status.phase is SpecialistPhase.SHADOW, status.versions[-1].message
    version = status.versions[-1]
    assert version.state is VersionState.SHADOW and version.scores is not None and version.version
    route = routes.read().for_specialist("intent-router")
    assert route is not None and route.candidate is not None and route.candidate.version == version.version
    assert store.manifest("adapter", "intent-router", version.version).metadata["training"]["steps"] == 4
    assert driver().status("intent-router") == status  # persisted: a restart resumes from it
    invalid = SPEC.model_copy(update={"pool": "Not A Name"})
    (tmp_path / "flywheel" / "specialists" / "broken.yaml").write_text(
        f"metadata: {{name: broken}}\nspec: {invalid.model_dump_json(by_alias=True)}\n"
    )
    assert "spec.pool" in driver().specialists()["broken"][1]
    (tmp_path / "flywheel" / "specialists" / "digits.yaml").write_text(  # what the CRD's CEL rule refuses
        f"metadata: {{name: 7-eleven}}\nspec: {SPEC.model_dump_json(by_alias=True)}\n"
    )
    assert "must be a DNS-1035 label" in driver().specialists()["7-eleven"][1]
