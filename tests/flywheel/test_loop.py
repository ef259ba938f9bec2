"""The local flywheel's heartbeat: calls through the gateway become tasks and Specialists.

The whole path to routed specialists, with training, is tests/flywheel/test_shapes_replay.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from protege.capture.access import CURATOR, OPERATOR
from protege.flywheel.data import StoreData
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, RayJobs, RouteFile
from protege.flywheel.loop import LocalFlywheel
from protege.flywheel.specialist import PoolFacts
from protege.serving.server import ServerThread
from protege.store.artifacts import ArtifactStore
from protege.testing.plugin import RunningGateway
from protege.testing.recorded_teacher import RecordedTeacher
from protege.training.curation import Curator
from protege.workload.replay import replay

pytestmark = pytest.mark.slow

POLICY = {
    "data": {"minExamples": 30},
    "training": {"rank": 8, "epochs": 1, "batchSize": 8, "maxSeqLen": 512, "resources": {"gpu": 0}},
    "evaluation": {"minRelativeToTeacher": 0.0},
}


async def test_one_tool_set_shared_by_several_tasks_gives_a_specialist_each_kept_across_heartbeats(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    smollm2: Path,
    start_gateway: Callable[..., RunningGateway],
) -> None:
    """A two-step agent (order lookup and stock check, each followed by a final answer) through the gateway.

    Before: every task offering the same tools was named after the first tool, so one Specialist
    `check-stock` was rewritten on every heartbeat with another task's id.
    """
    from traffic.shapes import tool_loop

    from protege.services.nats import NatsServer
    from protege.services.ray import LocalRay

    store = ArtifactStore((tmp_path / "store").as_uri())
    monkeypatch.setenv("PROTEGE_ARTIFACT_STORE", store.url)
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    calls = tool_loop(240, 5)
    with (
        NatsServer(tmp_path / "nats") as nats_server,
        ServerThread(RecordedTeacher(calls)) as teacher,  # type: ignore[arg-type]
        LocalRay(tmp_path / "ray", num_cpus=2) as ray,
    ):
        gateway = start_gateway(teacher_url=teacher.url + "/v1", nats_url=nats_server.url)
        outcomes = await replay(calls, gateway.base_url, gateway.key, model=gateway.settings.teacher.model)  # type: ignore[arg-type]
        assert all(o.error is None for o in outcomes)
        io = LocalFlywheelIO(
            StoreData(store, ttl_seconds=0),
            RayJobs(ray.address, ray.headers),
            RouteFile(tmp_path / "routes.json"),
            nats_server.endpoint(OPERATOR),  # the flywheel reads as the operator...
        )
        driver = LocalDriver(tmp_path / "flywheel", io, PoolFacts(smollm2.as_uri(), 16))
        never_trains = {**POLICY, "data": {"minExamples": 100_000}}
        curator = Curator(nats_server.endpoint(CURATOR), store)  # ...and curates as the curator
        reader = nats_server.endpoint(OPERATOR)
        wheel = LocalFlywheel(store, reader, driver, policy=never_trains, discover_every=0, curator=curator)

        first = await wheel.tick()
        assert first.tasks == 4 and len(set(first.created)) == 4
        tasks = {name: spec.task.id for name, (spec, _) in driver.specialists().items() if spec is not None}
        assert len(set(tasks.values())) == 4  # a Specialist per task
        second = await wheel.tick()
        assert second.created == []
        assert {n: s.task.id for n, (s, _) in driver.specialists().items() if s is not None} == tasks
