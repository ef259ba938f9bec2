"""A Specialist's whole life through the shared reconcile step, with I/O held in memory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from argocd_health import argocd_health

from protege.api.calls import (
    AlternateAnswer,
    CallRecord,
    ChatRequest,
    ChatResponse,
    Latency,
    RouteDecision,
    RouteReason,
    Upstream,
    UpstreamKind,
)
from protege.api.jobs import JobResult, JobSpec, job_id
from protege.api.specialist import (
    ConfidenceSignal,
    DataPolicy,
    SpecialistPhase,
    SpecialistSpec,
    SpecialistStatus,
    TaskSelector,
    TrainingSpec,
    VersionState,
)
from protege.flywheel.specialist import (
    WAITING_FOR_SLOT,
    Dataset,
    JobPhase,
    JobState,
    PoolFacts,
    TaskData,
    reconcile,
    schedule_due,
)
from protege.serving.router.table import SpecialistRoute

T0 = datetime(2026, 12, 1, tzinfo=UTC)
POOL = PoolFacts(base_model="smollm2-135m", max_lora_rank=16)
SPEC = SpecialistSpec.model_validate(
    {
        "pool": "p",
        "task": {"id": "task-1", "tenant": "acme"},
        "data": {"minExamples": 50},
        "training": {"rank": 8, "retrainAfterNewExamples": 40, "resources": {"gpu": 0}},
        "evaluation": {"minRelativeToTeacher": 0.8},
        "rollout": {
            "shadowCalls": 2,
            "canarySteps": [50, 100],
            "minCallsPerStep": 2,
            "minAgreement": 0.5,
            "confidence": 0.8,
        },
    }
)
REQUEST = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


class MemoryIO:
    def __init__(self) -> None:
        self.examples = 0
        self.jobs: dict[str, JobState] = {}
        self.started: list[JobSpec] = []
        self.results: dict[str, JobResult] = {}
        self.route: SpecialistRoute | None = None
        self.calls: list[CallRecord] = []
        self.slot_free = True
        self.reads = 0  # of the call log

    async def resolve_task(self, selector: TaskSelector) -> TaskData | None:
        return TaskData("task-1", self.examples) if selector.id == "task-1" and self.examples else None

    async def build_dataset(self, task_id: str, data: DataPolicy) -> Dataset:
        return Dataset(f"d{self.examples}", self.examples)

    async def start_job(self, job: JobSpec) -> str:
        name = f"{job.specialist}-train-{job_id(job)}"
        if name not in self.jobs:
            self.started.append(job)
            self.jobs[name] = JobState(JobPhase.RUNNING)
        return name

    async def job_state(self, name: str) -> JobState:
        return self.jobs.get(name, JobState(JobPhase.MISSING))

    async def job_result(self, name: str) -> JobResult | None:
        return self.results.get(name)

    async def running_jobs(self, specialist: str) -> list[str]:
        return [name for name, state in self.jobs.items() if state.phase is JobPhase.RUNNING]

    async def training_slot_free(self, training: TrainingSpec) -> bool:
        return self.slot_free

    async def read_route(self, specialist: str) -> SpecialistRoute | None:
        return self.route

    async def write_route(self, route: SpecialistRoute) -> None:
        self.route = route

    async def records(self, tenant: str, since: datetime | None) -> Sequence[CallRecord]:
        self.reads += 1
        return [r for r in self.calls if since is None or r.timestamp >= since]

    def finish(self, name: str, version: str, score: float, check: dict[str, Any] | None = None) -> None:
        self.jobs[name] = JobState(JobPhase.SUCCEEDED)
        scores = {"metric": "exact_match", "specialist": score, "teacher": 1.0, "relativeToTeacher": score}
        self.results[name] = JobResult.model_validate(
            {"adapter_version": version, "dataset_version": "d", "scores": scores, "confidence_check": check}
        )

    def call(
        self,
        at: datetime,
        served: str | None,
        shadow: tuple[str, float] | None = None,
        sampled: float | None = None,
        **decided: Any,
    ) -> None:
        """A call answered by ``served`` (the teacher when None), with a shadow and a teacher sample;
        ``decided``: more of the router's decision (its task, the call's novelty)."""
        teacher = Upstream(kind=UpstreamKind.TEACHER, model="big")
        sample = AlternateAnswer(upstream=teacher, agreement=sampled) if sampled is not None else None
        alternate = None
        if shadow is not None:
            upstream = Upstream(kind=UpstreamKind.SPECIALIST, model="s", specialist="s", version=shadow[0])
            alternate = AlternateAnswer(upstream=upstream, agreement=shadow[1])
        route = RouteDecision(
            target=UpstreamKind.SPECIALIST if served else UpstreamKind.TEACHER,
            reason=RouteReason.SPECIALIST if served else RouteReason.SHADOW,
            specialist="s",
            version=served,
            **decided,
        )
        self.calls.append(
            CallRecord(
                tenant="acme",
                timestamp=at,
                request=REQUEST,
                response=ChatResponse.model_validate({"choices": [{"message": {"content": "x"}}]}),
                latency=Latency(total_ms=1),
                route=route,
                alternate=alternate,
                teacher_sample=sample,
            )
        )


async def step(
    io: MemoryIO, status: SpecialistStatus, at: datetime, **kwargs: Any
) -> tuple[SpecialistStatus, list[str]]:
    outcome = await reconcile("s", SPEC, POOL, status, io, now=at, **kwargs)
    return outcome.status, [event.reason for event in outcome.events]


def progress(status: SpecialistStatus) -> tuple[str | None, str | None, str]:
    """kstatus's Reconciling and Stalled reasons (None: absent) and the health Argo CD shows."""
    held = {c.type: c.reason for c in status.conditions if c.status.value == "True"}
    return held.get("Reconciling"), held.get("Stalled"), argocd_health(status.to_kube(), None)[0]


async def test_data_then_training_then_shadow_canary_and_promotion() -> None:
    io, status = MemoryIO(), SpecialistStatus()
    status, events = await step(io, status, T0)
    assert status.phase is SpecialistPhase.COLLECTING_DATA and events == []
    assert {c.type: c.reason for c in status.conditions}["DataReady"] == "TaskNotFound"

    io.examples = 30
    status, _ = await step(io, status, T0)
    assert status.phase is SpecialistPhase.COLLECTING_DATA and status.examples == 30
    assert progress(status) == (None, None, "Healthy")  # waiting for traffic is not work in progress
    assert io.route is not None and io.route.task_id == "task-1" and io.route.active is None  # registered

    io.examples = 60
    status, events = await step(io, status, T0)
    assert events == ["TrainingStarted"] and status.phase is SpecialistPhase.TRAINING
    assert progress(status) == ("Training", None, "Progressing")
    [job] = io.started
    assert (job.dataset_version, job.base_model, job.max_lora_rank) == ("d60", "smollm2-135m", 16)
    status, events = await step(io, status, T0)  # still running: nothing new, no second job
    assert events == [] and len(io.started) == 1

    check = {"signal": "minimum", "threshold": 0.4, "precision": 0.8, "recall": 0.6, "fallbackRate": 0.05}
    io.finish(status.versions[-1].job_name or "", "v1", 0.9, check | {"examples": 60, "disagreements": 6})
    status, events = await step(io, status, T0 + timedelta(minutes=1))
    assert events == ["CandidateShadowing"] and status.phase is SpecialistPhase.SHADOW
    assert progress(status) == ("Shadow", None, "Progressing")
    assert io.route.candidate is not None and io.route.candidate.version == "v1"
    calibrated = status.versions[-1].confidence_check  # the job's calibrated check: in the status and route
    assert calibrated is not None and calibrated.signal is ConfidenceSignal.MINIMUM
    assert io.route.confidence_checks == {"v1": calibrated}

    for _ in range(2):  # shadowed calls, teacher answered, the candidate agreed
        io.call(T0 + timedelta(minutes=2), None, ("v1", 1.0))
    status, events = await step(io, status, T0 + timedelta(minutes=3))
    assert events == ["CanaryStep"] and status.phase is SpecialistPhase.CANARY and status.traffic_share == 50
    assert progress(status) == ("Canary", None, "Progressing")
    status, events = await step(io, status, T0 + timedelta(minutes=4))
    assert events == []  # the canary step starts empty: old shadow calls do not count

    for _ in range(2):  # canary answers, scored by teacher samples
        io.call(T0 + timedelta(minutes=5), "v1", sampled=1.0)
    io.call(T0 + timedelta(minutes=5), "v1")  # not sampled: does not count
    reads = io.reads
    status, events = await step(io, status, T0 + timedelta(minutes=6))
    assert io.reads == reads + 1  # one read of the call log a pass: the canary's and the drift's
    assert events == ["Promoted"] and status.phase is SpecialistPhase.SERVING
    assert (status.active_version, status.traffic_share, status.score_vs_teacher) == ("v1", 100, 0.9)
    ready = {c.type: c for c in status.conditions}["Ready"]
    assert ready.status.value == "True" and ready.reason == "Serving"
    assert progress(status) == (None, None, "Healthy")
    assert status.versions[-1].state is VersionState.SERVING
    assert io.route.confidence_checks == {"v1": calibrated}


async def test_a_rejected_candidate_and_a_rollback_leave_the_active_version() -> None:
    io = MemoryIO()
    io.examples = 60
    io.route = SpecialistRoute(specialist="s", tenant="acme", task_id="task-1")
    status, _ = await step(io, SpecialistStatus(), T0)
    io.finish(status.versions[-1].job_name or "", "v1", 0.5)  # below 0.8 of the teacher
    status, events = await step(io, status, T0)
    assert events == ["CandidateRejected"] and status.versions[-1].state is VersionState.REJECTED
    assert "minRelativeToTeacher" in status.versions[-1].message and io.route.candidate is None
    assert status.phase is SpecialistPhase.COLLECTING_DATA

    io.examples = 100  # 40 new examples: retrain
    status, events = await step(io, status, T0)
    assert events == ["TrainingStarted"] and "40 new examples" in status.versions[-1].message
    io.finish(status.versions[-1].job_name or "", "v2", 0.95)
    status, _ = await step(io, status, T0)
    for _ in range(6):
        io.call(T0 + timedelta(seconds=1), None, ("v2", 0.0))
    status, events = await step(io, status, T0 + timedelta(seconds=2))
    assert events == ["RolledBack"] and status.versions[-1].state is VersionState.ROLLED_BACK
    message = status.versions[-1].message
    assert "agreement 0.000" in message and "upper bound < rollout.minAgreement" in message
    assert io.route.candidate is None and io.route.active is None


async def test_a_failed_job_says_why_and_a_trigger_retrains_once() -> None:
    io = MemoryIO()
    io.examples = 60
    status, _ = await step(io, SpecialistStatus(), T0)
    name = status.versions[-1].job_name or ""
    io.jobs[name] = JobState(JobPhase.FAILED)
    io.results[name] = JobResult(error="training.rank 32 exceeds the pool's engine.maxLoraRank 16")
    status, events = await step(io, status, T0)
    assert events == ["TrainingFailed"] and status.phase is SpecialistPhase.FAILED
    assert "maxLoraRank" in status.versions[-1].message
    assert progress(status) == (None, "Failed", "Degraded")  # stalled: it needs new data or a trigger
    assert "maxLoraRank" in argocd_health(status.to_kube(), None)[1]
    status, events = await step(io, status, T0)
    assert events == [] and len(io.started) == 1  # no retry loop without new data

    io.examples = 61  # a new dataset, so a new job spec
    status, events = await step(io, status, T0, trigger="2026-12-01T10:00")
    assert events == ["TrainingStarted"] and status.handled_trigger == "2026-12-01T10:00"
    io.jobs[status.versions[-1].job_name or ""] = JobState(JobPhase.FAILED)
    status, _ = await step(io, status, T0, trigger="2026-12-01T10:00")
    status, events = await step(io, status, T0, trigger="2026-12-01T10:00")
    assert events == [] and len(io.started) == 2  # the same trigger value acts once


async def test_with_no_free_training_slot_it_waits_and_trains_on_what_came_meanwhile() -> None:
    io = MemoryIO()
    io.examples, io.slot_free = 60, False
    status, events = await step(io, SpecialistStatus(), T0, trigger="2026-12-01T10:00")
    assert events == [] and io.started == [] and status.phase is SpecialistPhase.COLLECTING_DATA
    trained = {c.type: c for c in status.conditions}["Trained"]
    assert trained.reason == WAITING_FOR_SLOT and "waiting for a free training slot" in trained.message
    assert status.handled_trigger is None  # the trigger is still to act on

    io.examples, io.slot_free = 90, True
    status, events = await step(io, status, T0, trigger="2026-12-01T10:00")
    assert events == ["TrainingStarted"] and status.handled_trigger == "2026-12-01T10:00"
    [job] = io.started
    assert job.dataset_version == "d90"  # built when the job could start, with the examples since
    assert {c.type: c for c in status.conditions}["Trained"].reason == VersionState.TRAINING.value


async def test_a_job_started_but_not_recorded_is_adopted_not_duplicated() -> None:
    io = MemoryIO()
    io.examples = 60
    await step(io, SpecialistStatus(), T0)  # started a job; its status update is lost
    io.examples = 70  # new data would make a different job spec
    status, _ = await step(io, SpecialistStatus(), T0)
    assert len(io.started) == 1 and status.phase is SpecialistPhase.TRAINING
    assert status.versions[-1].message == "adopted a running job"


async def test_suspended_and_schedule() -> None:
    io = MemoryIO()
    io.examples = 60
    suspended = SPEC.model_copy(update={"suspend": True})
    outcome = await reconcile("s", suspended, POOL, SpecialistStatus(), io, now=T0)
    assert outcome.status.phase is SpecialistPhase.SUSPENDED and io.started == []
    assert progress(outcome.status) == (None, None, "Suspended")
    assert schedule_due("@daily", T0, T0 + timedelta(hours=25))
    assert not schedule_due("@daily", T0 + timedelta(hours=1), T0 + timedelta(hours=20))
    assert not schedule_due(None, T0, T0 + timedelta(days=9))


async def test_a_serving_version_that_turns_wrong_is_rolled_back_and_retrained() -> None:
    """Answers that stay valid but stop agreeing with the teacher (a label swapped, say)."""
    io = MemoryIO()
    io.examples = 60
    status, _ = await step(io, SpecialistStatus(), T0)
    io.finish(status.versions[-1].job_name or "", "v1", 0.95)
    status, _ = await step(io, status, T0)
    serve(status, "v1")
    for minute in range(4):
        io.call(T0 + timedelta(minutes=minute), "v1", sampled=1.0)
    status, events = await step(io, status, T0 + timedelta(minutes=5))
    assert events == [] and status.live is not None and status.live.stage == "serving"
    assert (status.live.calls, status.live.agreement) == (4, 1.0)
    for second in range(10):  # the agent's new release: v1's answers no longer match the teacher's
        io.call(T0 + timedelta(minutes=6, seconds=second), "v1", sampled=0.0)
    status, events = await step(io, status, T0 + timedelta(minutes=7))
    assert events == ["RolledBack"] and io.route.active is None  # no earlier good version: the teacher
    assert (
        status.versions[-1].state is VersionState.ROLLED_BACK
        and "while serving" in status.versions[-1].message
    )
    assert status.retrain_reason == "v1 was rolled back while serving" and status.live is None
    io.examples = 70  # the teacher samples' answers curated: retrain on them at once
    status, events = await step(io, status, T0 + timedelta(minutes=8))
    assert events == ["TrainingStarted"] and "rolled back while serving" in status.versions[-1].message
    assert status.retrain_reason is None


def serve(status: SpecialistStatus, version: str) -> None:
    """``version`` serves, its candidacy skipped: as the status says so (the route follows it)."""
    status.active_version, status.candidate_version, status.candidate_step = version, None, None
    status.versions[-1].state = VersionState.SERVING


def routed_calls(io: MemoryIO, at: datetime, calls: int, novel: int) -> None:
    """``calls`` of the task answered by v1, the first ``novel`` unlike its training calls (router's word)."""
    for index in range(calls):
        io.call(at, "v1", task_id="task-1", novelty=0.5 if index < novel else 0.0, novel=index < novel)


async def test_input_drift_is_reported_and_retrains_once_new_examples_arrive() -> None:
    io = MemoryIO()
    io.examples = 60
    status, _ = await step(io, SpecialistStatus(), T0)  # v1's training starts at T0
    io.finish(status.versions[-1].job_name or "", "v1", 0.95)
    status, _ = await step(io, status, T0)
    serve(status, "v1")
    routed_calls(io, T0 + timedelta(minutes=10), calls=100, novel=5)  # like the training calls
    status, events = await step(io, status, T0 + timedelta(minutes=11))
    assert events == [] and status.drift is not None
    assert (status.drift.calls, status.drift.novel, status.drift.expected) == (100, 0.05, 0.05)

    routed_calls(io, T0 + timedelta(minutes=20), calls=100, novel=60)  # the users ask otherwise now
    status, events = await step(io, status, T0 + timedelta(minutes=21))
    # 65 of 200 calls: the 80% interval's lower bound (about 0.28) is above maxInputDrift 0.25
    assert events == ["InputDrift"] and status.drift is not None and status.drift.calls == 200
    assert 0.25 < status.drift.low < status.drift.novel == 0.325 < status.drift.high
    assert len(io.started) == 1  # no new example to learn from yet
    status, events = await step(io, status, T0 + timedelta(minutes=22))
    assert events == []  # said once, while it lasts

    io.examples = 70  # the teacher's answers to new calls curated
    off = SPEC.model_copy(update={"data": DataPolicy(min_examples=50, max_input_drift=None)})
    outcome = await reconcile("s", off, POOL, status, io, now=T0 + timedelta(minutes=23))
    assert outcome.events == [] and len(io.started) == 1  # unset: drift never retrains
    status, events = await step(io, status, T0 + timedelta(minutes=23))
    assert events == ["TrainingStarted"] and len(io.started) == 2
    message = status.versions[-1].message
    assert message.startswith("retraining on 10 new examples: input drift: ")
    assert "of 200 calls unlike the training data (5% expected), over data.maxInputDrift 25%" in message
    status, events = await step(io, status, T0 + timedelta(minutes=24))
    assert events == [] and status.drift is None  # measured anew from the new training on


class CountingIO(MemoryIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def write_route(self, route: SpecialistRoute) -> None:
        self.writes += 1
        await super().write_route(route)


def rolled_out(*, canary: bool) -> SpecialistStatus:
    """v2 serves (v1 before it); with ``canary``, v3 answers 50% of the calls since T0."""
    versions = [{"version": v, "state": "Retired", "examples": 60, "jobName": f"j-{v}"} for v in ("v1", "v2")]
    versions[1]["state"] = "Serving"
    status = {"activeVersion": "v2", "previousVersion": "v1", "versions": versions}
    if canary:
        versions.append({"version": "v3", "state": "Canary", "examples": 60, "jobName": "j-v3"})
        status |= {
            "candidateVersion": "v3",
            "candidateStep": {"stage": "canary", "trafficPercent": 50, "since": T0.isoformat()},
        }
    return SpecialistStatus.model_validate(status)


async def test_a_route_lost_or_edited_out_of_band_is_written_again_as_the_status_says() -> None:
    """The status is the rollout's source of truth, the routing table derived from it: a route gone
    (the ConfigMap deleted, the file removed) comes back with its versions and the candidate's step;
    one edited comes back as it was; an unchanged one is not written (no watch event for the gateways)."""
    for canary in (False, True):
        io, status = CountingIO(), rolled_out(canary=canary)
        io.examples = 60
        status, events = await step(io, status, T0 + timedelta(minutes=1))  # the route is gone
        assert events == [] and io.writes == 1 and io.route is not None
        assert (io.route.active, io.route.previous, io.route.task_id) == ("v2", "v1", "task-1")
        assert status.phase is (SpecialistPhase.CANARY if canary else SpecialistPhase.SERVING)
        if canary:
            assert io.route.candidate is not None
            assert io.route.candidate.model_dump() == {
                "version": "v3",
                "stage": "canary",
                "traffic_percent": 50,
                "since": T0,
            }
        else:
            assert io.route.candidate is None
        restored = io.route

        status, events = await step(io, status, T0 + timedelta(minutes=2))
        assert events == [] and io.writes == 1  # nothing differs: no write

        io.route = restored.model_copy(update={"active": "v9", "previous": None, "candidate": None})
        status, events = await step(io, status, T0 + timedelta(minutes=3))  # edited out of band
        assert events == [] and io.writes == 2 and io.route == restored


async def test_the_status_records_the_route_a_transition_wrote() -> None:
    """The previous version and the candidate's step are in the status after each transition, so the
    route it implies is the one written; a status without them (an older operator's) keeps the table's."""
    io = MemoryIO()
    io.examples = 60
    status, _ = await step(io, SpecialistStatus(), T0)
    io.finish(status.versions[-1].job_name or "", "v1", 0.95)
    status, events = await step(io, status, T0)
    assert events == ["CandidateShadowing"] and status.candidate_step is not None
    assert (status.candidate_step.stage, status.candidate_step.since) == ("shadow", T0)
    assert io.route is not None and io.route.candidate is not None and io.route.candidate.since == T0

    legacy = status.model_copy(update={"candidate_step": None})  # the table's step is kept
    status, events = await step(io, legacy, T0 + timedelta(minutes=1))
    assert events == [] and status.candidate_step is not None and status.candidate_step.since == T0
