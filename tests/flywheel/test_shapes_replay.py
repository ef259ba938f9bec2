"""Agent traffic of shapes the project did not write: through the gateway and the flywheel to specialists.

Three shapes real agents send (tests/traffic/shapes.py), mixed in one tenant's traffic as an
organisation running three agents would send it:

- ``tool_retrieval``: a different few of 150 tools offered on every call;
- ``rag_templates``: system prompts carrying today's date, the customer and retrieved passages;
- ``pii_prompts``: system prompts naming a doctor, with e-mail and phone.

The calls go through a real gateway (uvicorn, routing on) to a teacher that answers from its
recordings, are logged to real NATS; the local flywheel (the one ``protege up`` runs) curates
them (redaction included), discovers tasks, creates a Specialist per task, trains each through
a real local Ray with real PEFT, gates, rolls out and writes the routing file the gateway
re-reads. Held-out calls then go through the same gateway: each shape has a specialist
answering, and every call a specialist answers is a call of its own task.

The base model is ``tiny_llama`` (tests/conftest.py), a two-layer Llama with SmolLM2's
tokenizer made at test time: what is under test is the path from traffic to routes, not what
the adapters learn (real SmolLM2 training is tests/training/test_job.py and
test_loop_step.py), and a job on it takes seconds instead of a minute. The engine behind the
routes is the recorded teacher standing in for the adapters, as in
tests/agents/test_routed_frameworks.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from traffic.shapes import ShapedCall, pii_prompts, rag_templates, tool_retrieval

from protege.api.calls import CallRecord, UpstreamKind
from protege.api.specialist import SpecialistPhase
from protege.capture.access import CURATOR, OPERATOR
from protege.flywheel.data import StoreData
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, RayJobs, RouteFile
from protege.flywheel.loop import LocalFlywheel
from protege.flywheel.specialist import PoolFacts
from protege.serving.server import ServerThread
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import load_registry
from protege.tasks.discovery import Task
from protege.testing.plugin import RunningGateway, wait_for_records
from protege.testing.recorded_teacher import RecordedTeacher, request_key
from protege.training.curation import Curator
from protege.workload.replay import replay

pytestmark = pytest.mark.slow

SHAPES = {"tool_retrieval": tool_retrieval, "rag_templates": rag_templates, "pii_prompts": pii_prompts}
LEARN, HELD_OUT = 90, 30  # calls per shape before and after the specialists serve
POLICY = {
    "data": {"minExamples": 20},
    "training": {"rank": 4, "epochs": 1, "batchSize": 4, "maxSeqLen": 768, "resources": {"gpu": 0}},
    "evaluation": {"minRelativeToTeacher": 0.0},  # what is learnt is not under test here
    "rollout": {"shadowCalls": 0, "canarySteps": [100]},  # serve once gated: routing is under test
    "fallback": {"calibratedConfidence": False},  # the stand-in engine returns no token logprobs
    "suspend": True,  # created suspended; the test resumes one per shape (CPU time: a job each)
}


def shaped(seed: int, count: int) -> list[ShapedCall]:
    return [call for index, make in enumerate(SHAPES.values()) for call in make(count, seed + index)]


async def test_each_shape_gets_a_specialist_that_answers_only_its_own_task(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_llama: Path,
    start_gateway: Callable[..., RunningGateway],
) -> None:
    from protege.services.nats import NatsServer
    from protege.services.ray import LocalRay

    store = ArtifactStore((tmp_path / "store").as_uri())
    monkeypatch.setenv("PROTEGE_ARTIFACT_STORE", store.url)
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    learn, held_out = shaped(10, LEARN), shaped(50, HELD_OUT)
    task_of = {request_key(call.request): call.task for call in [*learn, *held_out]}
    routes = RouteFile(tmp_path / "routes.json")
    # A call log of its own: the curator reads every tenant's calls, other tests' too.
    with (
        NatsServer(tmp_path / "nats") as nats_server,
        ServerThread(RecordedTeacher([*learn, *held_out])) as teacher,  # type: ignore[list-item]
        LocalRay(tmp_path / "ray", num_cpus=2) as ray,
    ):
        router = {
            "enabled": True,
            "engine_url": teacher.url,
            "table": str(routes.path),
            "refresh_seconds": 0.1,
        }
        gateway = start_gateway(
            teacher_url=teacher.url + "/v1", nats_url=nats_server.url, artifact_store=store.url, router=router
        )
        model = gateway.settings.teacher.model
        outcomes = await replay(learn, gateway.base_url, gateway.key, model=model)  # type: ignore[arg-type]
        assert all(o.error is None and o.specialist is None for o in outcomes)
        truth = {r.id: task_of[key(r)] for r in await calls_of(nats_server.url, gateway.tenant, len(learn))}

        jobs = RayJobs(ray.address, ray.headers)
        options = {"max_steps": 1, "max_new_tokens": 4, "few_shot": 0}

        def flywheel() -> LocalFlywheel:  # a new one each time: a restarted `protege up`
            reader = nats_server.endpoint(OPERATOR)  # the flywheel reads the log as the operator...
            io = LocalFlywheelIO(StoreData(store, ttl_seconds=0), jobs, routes, reader)
            pool = PoolFacts(tiny_llama.as_uri(), 16)
            driver = LocalDriver(tmp_path / "flywheel", io, pool, job_options=options)
            curator = Curator(nats_server.endpoint(CURATOR), store)  # ...and curates as the curator
            return LocalFlywheel(store, reader, driver, policy=POLICY, discover_every=3600, curator=curator)

        wheel = flywheel()
        first = await wheel.tick()
        # Near duplicates are dropped: the RAG answers greet the customer by name, and once every
        # name is one placeholder many of them are the same answer (26 of 90 here, with NER).
        assert first.curated >= 0.8 * len(learn) and first.discovered
        registry = load_registry(store)
        assert registry is not None and len(first.created) == len(registry.tasks)
        assert not first.driven.events  # created suspended: no job
        majority = true_task_of_each(registry.tasks, truth)
        chosen = resume_the_largest_true_task_of_each_shape(wheel.driver, registry.tasks, majority)

        again = await flywheel().tick()  # restarted: nothing new to curate, no new Specialist
        assert again.curated == 0 and again.created == [] and again.tasks == len(registry.tasks)
        await serve(wheel, routes, set(chosen))
        assert len(jobs.client.list_jobs()) == len(chosen)  # a job each, the restart's included

        await routes_read(gateway, set(chosen))
        outcomes = await replay(held_out, gateway.base_url, gateway.key, model=model)  # type: ignore[arg-type]
        assert all(o.error is None for o in outcomes)
        every = await calls_of(nats_server.url, gateway.tenant, len(learn) + len(held_out))

    later = [record for record in every if record.id not in truth]
    assert len(later) == len(held_out)
    for record in later:  # a specialist answers only calls of its own task
        if record.route.target is UpstreamKind.SPECIALIST:
            assert majority[record.route.task_id or ""] == task_of[key(record)], record.route
    for shape in SHAPES:  # and most of them: a task split in discovery has a Specialist per part
        served = {majority[t] for t, s in chosen.items() if s == shape}
        mine = [r for r in later if task_of[key(r)] in served]
        share = sum(r.route.target is UpstreamKind.SPECIALIST for r in mine) / len(mine)
        assert share >= 0.8, (shape, share, Counter(str(r.route.reason) for r in mine))


def true_task_of_each(tasks: list[Task], truth: dict[str, str]) -> dict[str, str]:
    """Each discovered task's true task; none mixes two, and a true task is split in a handful at most."""
    majority = {t.id: Counter(truth[i] for i in t.example_ids).most_common(1)[0][0] for t in tasks}
    for task in tasks:
        assert {truth[i] for i in task.example_ids} == {majority[task.id]}, task.name
    found = Counter(majority.values())
    assert set(found) == set(truth.values()) and max(found.values()) <= 3, found
    return majority


def resume_the_largest_true_task_of_each_shape(
    driver: LocalDriver, tasks: list[Task], majority: dict[str, str]
) -> dict[str, str]:
    """Resume (as `kubectl patch` would) the Specialists of each shape's largest true task; id → shape."""
    specialists = {spec.task.id: (name, spec) for name, (spec, _) in driver.specialists().items() if spec}
    chosen: dict[str, str] = {}
    for shape, make in SHAPES.items():
        sizes = Counter(dict.fromkeys({call.task for call in make(LEARN, 0)}, 0))
        sizes.update({majority[t.id]: t.size for t in tasks if majority[t.id] in sizes})
        largest = sizes.most_common(1)[0][0]
        for task in (t for t in tasks if majority[t.id] == largest):
            name, spec = specialists[task.id]
            driver.add(name, spec.model_copy(update={"suspend": False}))
            chosen[task.id] = shape
    return chosen


async def serve(wheel: LocalFlywheel, routes: RouteFile, task_ids: set[str]) -> None:
    """Heartbeats until these tasks' Specialists serve (trained, gated, rolled out) or one fails."""
    for _ in range(300):
        tick = await wheel.tick()
        serving = {r.task_id for r in routes.read().routes if r.active is not None}
        failed = [s for s in tick.driven.statuses.values() if s.phase is SpecialistPhase.FAILED]
        if serving >= task_ids or failed:
            break
        await asyncio.sleep(1)
    assert serving == task_ids, [
        (name, status.phase, status.versions[-1].message if status.versions else None)
        for name, status in tick.driven.statuses.items()
    ]


async def routes_read(gateway: RunningGateway, task_ids: set[str]) -> None:
    """Until the gateway has re-read the routing file with these tasks' routes active."""
    router = gateway.server.server.config.app.state.gateway.router
    for _ in range(100):
        if {r.task_id for r in router.table.routes if r.active} >= task_ids:
            return
        await asyncio.sleep(0.1)


def key(record: CallRecord) -> str:
    return request_key(record.request.model_dump(mode="json", exclude_none=True))


async def calls_of(nats_url: str, tenant: str, expect: int) -> list[CallRecord]:
    return [r for r in await wait_for_records(nats_url, tenant, expect) if isinstance(r, CallRecord)]
