"""An episode of an agent's traffic: a serving specialist turns wrong while staying valid, and is rolled back.

Everything the episode touches is real except training: a real gateway (uvicorn) with routing on,
logging to real NATS; the shipped workload's intent calls (``protege.workload.generate``) and the
recorded teacher that answers them correctly (the reference); a pool engine answering as versions
``v0`` and ``v1`` of the specialist; and the flywheel's own step (:func:`reconcile`) reading the
call log and writing the routing file the gateway re-reads, through the same store facts, call
log reader and route file as the local driver (no training job runs in the episode).

``v1`` serves, ``v0`` (the version it replaced) is its route's ``previous``. Midway, ``v1`` turns
wrong while its answers stay valid: two labels swapped (``cancel_order`` ↔ ``refund_request``),
each still one of the task's five labels. The gateway scores every answer ``v1`` returns against
a teacher sample with the Specialist's metric; the flywheel watches the estimate fall and rolls
``v1`` back to ``v0`` within the calls the Wilson interval needs, and the agent's accuracy over
the episode stays within the bar those calls allow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from protege.api.calls import CallRecord, RouteReason, UpstreamKind
from protege.api.jobs import JobSpec
from protege.api.specialist import (
    RolloutSpec,
    SpecialistPhase,
    SpecialistSpec,
    SpecialistStatus,
    SpecialistVersion,
    TrainingSpec,
    VersionState,
)
from protege.capture.connection import NatsTarget
from protege.evaluation.metrics import exact_match
from protege.flywheel.data import StoreData, StoreFacts, call_records
from protege.flywheel.local import RouteFile
from protege.flywheel.policy import (
    RolloutAction,
    calls_to_decide,
    estimate,
    next_rollout_move,
)
from protege.flywheel.rollout import watch
from protege.flywheel.specialist import JobPhase, JobState, PoolFacts, reconcile
from protege.serving.router.router import Router
from protege.serving.router.table import SpecialistRoute, parse_adapter_name
from protege.serving.server import ServerThread
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import load_registry
from protege.testing.plugin import RunningGateway, call_log, seed_task
from protege.testing.recorded_teacher import MODEL as TEACHER_MODEL
from protege.testing.recorded_teacher import RecordedTeacher, Recordings
from protege.testing.stub_teacher import StubTeacher
from protege.workload import WorkloadCall, generate

pytestmark = pytest.mark.slow

NAME, TASK = "intent-spec", "t-intent"
SWAP = {"cancel_order": "refund_request", "refund_request": "cancel_order"}  # v1's new release
ROUND = 4  # calls per round; the flywheel's step runs after each round
BEFORE = 40  # calls before the turn
AFTER_ROLLBACK = 12  # calls after the rollback
POOL = PoolFacts(base_model="smollm2-135m", max_lora_rank=16)


def specialist_spec(tenant: str) -> SpecialistSpec:
    """The Specialist. Its rollout block, with the figures the episode's bounds come from:

    - ``minAgreement`` 0.9 at ``confidence`` 0.95 (z = 1.96): the defaults;
    - ``teacherSampleRate`` 1.0: every answer a version returns is scored, so the calls the
      interval needs are calls of the episode (at a rate r they would be about n / r calls, and
      which calls were scored would be random); production trades that for teacher tokens;
    - ``watchMinutes`` 60: the whole episode is in the watch window, the calls before the turn
      included (they slow the estimate's fall: that is part of what the bound counts);
    - the serving watch has no floor (``shadowCalls`` and ``minCallsPerStep`` are floors of the
      shadow and canary stages): the version goes as soon as the upper bound is below the bar.
    """
    return SpecialistSpec.model_validate(
        {
            "pool": "p",
            "task": {"id": TASK, "tenant": tenant},
            "data": {"minExamples": 10},
            "rollout": {
                "minAgreement": 0.9,
                "confidence": 0.95,
                "teacherSampleRate": 1.0,
                "watchMinutes": 60,
                "autoRollback": True,
            },
        }
    )


class Engine:
    """The pool's engine (answers as StubTeacher's ``answer``): versions v0 and v1 answer as the
    teacher does, until v1 turns: then it answers ``SWAP``'s label for those two, valid but wrong."""

    def __init__(self, calls: Sequence[WorkloadCall]) -> None:
        self.recordings = Recordings(calls)
        self.turned = False

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]] | None]:
        content, tool_calls = self.recordings(request)
        _, version = parse_adapter_name(str(request["model"]))
        if self.turned and version == "v1" and content is not None:
            content = SWAP.get(content, content)
        return content, tool_calls


class EpisodeIO(StoreFacts):
    """The flywheel's I/O: the store's facts and the call log (:class:`StoreFacts`, as the operator
    and the local driver use them) and the local driver's routing file; no training job runs."""

    def __init__(self, store: ArtifactStore, nats_url: NatsTarget, table: Path) -> None:
        super().__init__(StoreData(store, ttl_seconds=0), nats_url)
        self.routes = RouteFile(table)

    async def start_job(self, job: JobSpec) -> str:
        raise AssertionError(f"no training was due in this episode: {job}")

    async def job_state(self, name: str) -> JobState:
        return JobState(JobPhase.MISSING)

    async def running_jobs(self, specialist: str) -> list[str]:
        return []

    async def training_slot_free(self, training: TrainingSpec) -> bool:
        return True

    async def read_route(self, specialist: str) -> SpecialistRoute | None:
        return self.routes.read().for_specialist(specialist)

    async def write_route(self, route: SpecialistRoute) -> None:
        await self.routes.update(route.specialist, route)


def expected_score(call: WorkloadCall) -> float:
    """The score a turned v1 answer gets against the teacher's (exact match: the task's labels)."""
    return 0.0 if call.meta["label"] in SWAP else 1.0


def calls_needed(turned_scores: list[float], policy: RolloutSpec) -> int:
    """The fewest calls after the turn at which the watch's upper bound falls below the bar.

    The watch window holds the BEFORE agreeing calls and then the turned ones (scored 0 for a
    swapped label, 1 for the other three labels): the Wilson interval over both.
    """
    return next(
        k
        for k in range(1, len(turned_scores) + 1)
        if (est := estimate([1.0] * BEFORE + turned_scores[:k], policy.confidence))
        and est.high < policy.min_agreement
    )


def gateway_router(gateway: RunningGateway) -> Router:
    app: Any = gateway.server.server.config.app
    router: Router = app.state.gateway.router
    return router


class Episode:
    """The agent's calls in rounds, and the flywheel's step after each round."""

    def __init__(self, gateway: RunningGateway, spec: SpecialistSpec, io: EpisodeIO) -> None:
        self.gateway, self.spec, self.io = gateway, spec, io
        self.status = SpecialistStatus()
        self.seen: list[tuple[WorkloadCall, str, str]] = []  # (call, the answer the caller saw, who answered)
        self.records: list[CallRecord] = []
        self.client = httpx.AsyncClient(
            base_url=gateway.base_url, headers={"Authorization": f"Bearer {gateway.key}"}, timeout=30
        )

    async def step(self) -> list[str]:
        """The flywheel's pass (as the local driver's: now, the call log, the routing file)."""
        outcome = await reconcile(NAME, self.spec, POOL, self.status, self.io, now=datetime.now(UTC))
        self.status = outcome.status
        return [f"{event.reason}: {event.message}" for event in outcome.events]

    async def send(self, calls: Sequence[WorkloadCall]) -> None:
        """A round of the agent's calls, one after the other; then until all are in the call log."""
        for call in calls:
            body = {**call.request, "model": TEACHER_MODEL}
            answered = await self.client.post("/chat/completions", json=body)
            assert answered.status_code == 200, answered.text
            content = answered.json()["choices"][0]["message"]["content"]
            self.seen.append((call, content, answered.headers["x-protege-upstream"]))
        deadline = time.monotonic() + 20
        while len(found := await call_records(self.io.nats_url, self.gateway.tenant, None)) < len(self.seen):
            assert time.monotonic() < deadline, f"{len(found)} of {len(self.seen)} records in the call log"
            await asyncio.sleep(0.05)
        self.records = list(found)

    async def served(self) -> None:
        """Wait until the gateway's router has read the route file as it is now (every 0.05 s)."""
        router, wanted = gateway_router(self.gateway), self.io.routes.read().for_specialist(NAME)
        deadline = time.monotonic() + 10
        while router.table.for_specialist(NAME) != wanted:
            assert time.monotonic() < deadline, "the gateway never read the routing table"
            await asyncio.sleep(0.02)

    async def start(self, store: ArtifactStore) -> None:
        """The intent task discovered, and v1 serving, promoted over v0."""
        tenant = self.gateway.tenant
        seed_task(store, "intent", 20, task_id=TASK, tenant=tenant)
        registry = load_registry(store)
        assert registry is not None
        size = registry.get(TASK).size
        router = gateway_router(self.gateway)
        deadline = time.monotonic() + 20
        while (task := router.tasks.get(TASK)) is None or task.router.fingerprint.tenant != tenant:
            assert time.monotonic() < deadline, "the gateway never read the task registry"
            await asyncio.sleep(0.05)
        route = SpecialistRoute(specialist=NAME, tenant=tenant, task_id=TASK, active="v1", previous="v0")
        await self.io.write_route(route)
        trained = datetime.now(UTC) - timedelta(days=1)
        v0 = SpecialistVersion(version="v0", state=VersionState.RETIRED, examples=size, created_at=trained)
        v1 = SpecialistVersion(version="v1", state=VersionState.SERVING, examples=size, created_at=trained)
        v0.message = "replaced by v1"
        # as just after v1's promotion: the status says who serves, the route follows it
        self.status = SpecialistStatus(versions=[v0, v1], active_version="v1", previous_version="v0")
        assert await self.step() == []  # the route gets the spec's teacher sample rate and metric
        assert self.status.phase is SpecialistPhase.SERVING and self.status.live is None
        written = await self.io.read_route(NAME)
        assert written is not None and written.teacher_sample_rate == 1.0 and written.active == "v1"
        await self.served()

    async def serve(self, calls: Sequence[WorkloadCall], version: str) -> None:
        """Rounds of calls that ``version`` answers as the teacher would: it keeps serving."""
        counted = self.status.live.calls if self.status.live and self.status.live.version == version else 0
        for start in range(0, len(calls), ROUND):
            await self.send(calls[start : start + ROUND])
            assert await self.step() == []
            live = self.status.live
            assert live is not None and (live.version, live.agreement) == (version, 1.0)
            assert live.calls == counted + start + ROUND and live.high >= self.spec.rollout.min_agreement

    async def until_rolled_back(self, calls: Sequence[WorkloadCall], needed: int) -> tuple[int, list[str]]:
        """Rounds of turned calls until the step rolls v1 back: the calls it took, and the events."""
        turned, events = 0, []
        while self.status.active_version == "v1":
            assert turned < needed, f"v1 still serves {turned} calls after the turn: {self.status.live}"
            await self.send(calls[turned : turned + ROUND])
            turned += ROUND
            events = await self.step()
        await self.served()
        return turned, events


def check_log(episode: Episode, turned: int) -> list[tuple[WorkloadCall, str, str]]:
    """The call log: who answered each call (v1 until the rollback, v0 after), each answer scored
    against a teacher sample. The calls the agent made, with what it saw."""
    seen, by_text = episode.seen, {str(r.request.messages[-1].content): r for r in episode.records}
    assert len(by_text) == len(episode.records) == len(seen) == BEFORE + turned + AFTER_ROLLBACK
    for index, (call, _, upstream) in enumerate(seen):
        version = "v1" if index < BEFORE + turned else "v0"
        record = by_text[call.request["messages"][-1]["content"]]
        assert upstream == f"{NAME}@{version}" and record.route.version == version
        assert (
            record.route.reason is RouteReason.SPECIALIST and record.route.target is UpstreamKind.SPECIALIST
        )
        turned_wrong = BEFORE <= index < BEFORE + turned
        assert record.teacher_sample is not None  # scored with exact match, the metric of labels:
        assert record.teacher_sample.agreement == (expected_score(call) if turned_wrong else 1.0)
    return seen


async def test_a_serving_version_that_turns_wrong_is_rolled_back_within_the_calls_its_interval_needs(
    start_gateway: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    """v1 serves 40 calls agreeing with the teacher, then swaps two labels; the watch rolls it back
    to v0 after the calls the interval needs (with these calls: 28, 12 of them wrong), and the
    agent's accuracy over the episode (0.85) stays above the bar those calls allow (0.61)."""
    calls = generate(200, seed=11, families=("intent",))  # the teacher's recordings: the reference
    engine = Engine(calls)
    store = ArtifactStore((tmp_path / "store").as_uri())
    table = tmp_path / "routes.json"
    with (
        ServerThread(RecordedTeacher(calls)) as teacher,
        ServerThread(StubTeacher(answer=engine)) as pool,
    ):
        gateway = start_gateway(
            teacher_url=teacher.url + "/v1",
            teacher={"model": TEACHER_MODEL},
            artifact_store=store.url,
            router={
                "enabled": True,
                "engine_url": pool.url,
                "table": str(table),
                "refresh_seconds": 0.05,
                # the default budget (60 a minute) would skip samples of an episode sent in seconds
                "teacher_samples_per_minute": 6000,
                "max_teacher_samples_in_flight": 64,
                "deadline_floor_seconds": 10,  # a busy machine must not turn slow answers into fallbacks
            },
        )
        spec = specialist_spec(gateway.tenant)
        policy = spec.rollout
        bar, confidence = policy.min_agreement, policy.confidence
        episode = Episode(gateway, spec, EpisodeIO(store, call_log(gateway.settings.nats_url), table))
        before, rest = calls[:BEFORE], calls[BEFORE:]

        # The bounds. Before the turn every answer agrees: the lower bound clears 0.9 at 95 % after
        # calls_to_decide(1.0, 0.9, 0.95) = 35 calls; BEFORE (40) gets there. After it, the watch
        # needs `needed` calls (calls_needed: the window still holds the BEFORE good calls; turned
        # calls alone, about 60 % agreeing, would take calls_to_decide(0.6, 0.9, 0.95) = 4). The step
        # runs between rounds: v1 answers at most `needed` calls after the turn and the rest of the
        # round in which the interval decided.
        assert calls_to_decide(1.0, bar, confidence) == 35 <= BEFORE
        assert calls_to_decide(0.6, bar, confidence) == 4
        turned_scores = [expected_score(call) for call in rest]
        needed = calls_needed(turned_scores, policy)
        at_most = needed + ROUND - 1
        assert at_most + AFTER_ROLLBACK <= len(rest)

        await episode.start(store)
        async with episode.client:
            await episode.serve(before, "v1")  # v1 agrees: no rollback, and its lower bound rises
            assert episode.status.live is not None and episode.status.live.low >= bar  # a canary would pass
            engine.turned = True  # v1's new release: two labels swapped, each answer still a valid label
            turned, events = await episode.until_rolled_back(rest, needed)
            rolled_back = episode.records
            await episode.serve(rest[turned : turned + AFTER_ROLLBACK], "v0")  # v0 answers again, and agrees

    # The rollback: within the calls the interval needed, caused by the measured estimate.
    assert needed <= turned <= at_most, (needed, turned, at_most)
    measured = estimate([1.0] * BEFORE + turned_scores[:turned], confidence)
    assert measured is not None and measured.high < bar
    why = f"{measured}: upper bound < rollout.minAgreement 0.900"
    assert events == [f"RolledBack: v1 (serving) → v0: {why}"]
    status = episode.status
    v0, v1 = status.versions
    assert v1.state is VersionState.ROLLED_BACK and v1.message == f"rolled back while serving: {why}"
    assert (v0.state, v0.message) == (VersionState.SERVING, "serves again: v1 was rolled back")
    assert status.active_version == "v0" and status.retrain_reason == "v1 was rolled back while serving"
    route = await episode.io.read_route(NAME)
    assert route is not None and (route.active, route.previous) == ("v0", None)
    # The same calls without their teacher samples (a teacherSampleRate of 0) give the watch
    # nothing to go on: v1 would have served on.
    unsampled = [r.model_copy(update={"teacher_sample": None}) for r in rolled_back]
    serving_v1 = SpecialistRoute(specialist=NAME, tenant=gateway.tenant, task_id=TASK, active="v1")
    blind = watch(unsampled, serving_v1, policy, None)
    assert blind is not None and blind.estimate is None
    assert next_rollout_move(policy, blind).action is RolloutAction.WAIT

    seen = check_log(episode, turned)

    # The agent's accuracy over the episode (its answers against the teacher's), and its bar:
    # every call v1 could answer after the turn (at_most) counted as wrong.
    right = sum(exact_match({"content": content}, call.answer) for call, content, _ in seen)
    accuracy, floor = right / len(seen), 1 - at_most / len(seen)
    assert right == len(seen) - turned_scores[:turned].count(0.0)  # the swapped labels' calls alone
    assert accuracy >= floor, (accuracy, floor)
    print(
        f"{BEFORE} calls before the turn; rolled back after {turned} (the interval needed {needed}, "
        f"bound {at_most}): {measured}; {AFTER_ROLLBACK} after; accuracy {accuracy:.3f} >= bar {floor:.3f}"
    )
