"""On one machine as on a cluster: a Specialist whose manifest is removed stops being routed."""

from __future__ import annotations

from pathlib import Path

from protege.api.routes import SpecialistRoute
from protege.api.specialist import SpecialistSpec, SpecialistStatus
from protege.flywheel.data import StoreData
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, Pass, RouteFile
from protege.flywheel.specialist import PoolFacts
from protege.store.artifacts import ArtifactStore

SPEC = SpecialistSpec.model_validate({"pool": "local", "task": {"id": "task-1", "tenant": "acme"}})


async def test_a_removed_manifest_takes_its_route_and_status_away(tmp_path: Path) -> None:
    routes = RouteFile(tmp_path / "routes.json")
    io = LocalFlywheelIO(StoreData(ArtifactStore(tmp_path.as_uri())), None, routes, "nats://unused")  # type: ignore[arg-type]
    driver = LocalDriver(tmp_path / "flywheel", io, PoolFacts("smollm2-135m", 16))
    for name in ("kept", "gone"):
        driver.add(name, SPEC)
        await routes.update(
            name, SpecialistRoute(specialist=name, tenant="acme", task_id="task-1", active="v1")
        )
        (tmp_path / "flywheel" / "status" / f"{name}.json").write_text(SpecialistStatus().model_dump_json())
    (tmp_path / "flywheel" / "specialists" / "gone.yaml").unlink()  # `kubectl delete`, locally

    done = Pass()
    await driver.forget_removed(set(driver.specialists()), done)
    assert done.removed == ["gone"] and [r.specialist for r in routes.read().routes] == ["kept"]
    assert sorted(p.stem for p in (tmp_path / "flywheel" / "status").glob("*.json")) == ["kept"]
    await driver.forget_removed(set(driver.specialists()), done)  # nothing left to do: nothing written
    assert done.removed == ["gone"]
