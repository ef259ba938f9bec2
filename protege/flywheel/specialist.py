"""One step of a Specialist's flywheel: data → training job → gate → shadow → canary → serving.

Shared by the kopf operator (RayJobs, the pool's routing ConfigMap) and the local driver of
`protege up` (jobs on a local Ray, a routing file): each gives a :class:`FlywheelIO`, and
:func:`reconcile` decides with the pure policy (:mod:`protege.flywheel.policy`), acts
through the I/O, and returns the new status with an event for every transition.

Every action is safe to repeat after a crash: job names are a hash of their spec (starting
the same job twice finds the first), a job's result is read back from the store, and the
route is written whole from the status (:func:`implied_route`; the status is the rollout's source
of truth, the pool's routing table derived from it), only when the table's differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from croniter import croniter

from protege.api.calls import CallRecord
from protege.api.jobs import JobResult, JobSpec
from protege.api.meta import ConditionStatus, set_condition, set_progress
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import Candidate, RolloutStage, SpecialistRoute
from protege.api.specialist import (
    CandidateStep,
    ConfidenceCheck,
    DataPolicy,
    InputDrift,
    LiveAgreement,
    SpecialistPhase,
    SpecialistSpec,
    SpecialistStatus,
    SpecialistVersion,
    TaskSelector,
    TrainingSpec,
    VersionState,
)
from protege.flywheel.policy import (
    Estimate,
    RolloutAction,
    RolloutObservation,
    drift_retrain_reason,
    gate,
    next_rollout_move,
    should_train,
)
from protege.flywheel.rollout import EXPECTED_NOVEL_SHARE, apply, input_drift, observe, watch

KEEP_VERSIONS = 10
TRIGGER_ANNOTATION = "protege.dev/train"


class JobPhase(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    MISSING = "missing"  # deleted, or never created


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
    message: str = ""


@dataclass(frozen=True)
class TaskData:
    """The discovered task a Specialist's selector resolved to, and its curated examples."""

    id: str
    examples: int


@dataclass(frozen=True)
class Dataset:
    version: str
    examples: int


@dataclass(frozen=True)
class PoolFacts:
    """What a Specialist's jobs take from its pool."""

    base_model: str
    max_lora_rank: int
    base_model_revision: str | None = None

    @classmethod
    def of(cls, pool: SpecialistPoolSpec) -> PoolFacts:
        return cls(pool.base_model.source, pool.engine.max_lora_rank, pool.base_model.revision)


class FlywheelIO(Protocol):
    """Where the flywheel's facts come from and its actions go (operator or local driver)."""

    async def resolve_task(self, selector: TaskSelector) -> TaskData | None: ...

    async def build_dataset(self, task_id: str, data: DataPolicy) -> Dataset:
        """A dataset version of the task's curated examples that ``data`` lets a training use."""
        ...

    async def start_job(self, job: JobSpec) -> str:
        """Start the job (or find it started) and return its deterministic name."""
        ...

    async def job_state(self, name: str) -> JobState: ...

    async def job_result(self, name: str) -> JobResult | None: ...

    async def running_jobs(self, specialist: str) -> list[str]: ...

    async def training_slot_free(self, training: TrainingSpec) -> bool:
        """Whether a job would start at once. Where jobs queue for a shared cluster (the local
        Ray runs one beside serving), a Specialist waits and builds its dataset once one would:
        the examples that arrive while it waits are trained on too."""
        ...

    async def read_route(self, specialist: str) -> SpecialistRoute | None: ...

    async def write_route(self, route: SpecialistRoute) -> None: ...

    async def records(self, tenant: str, since: datetime | None) -> Sequence[CallRecord]: ...


WAITING_FOR_SLOT = "WaitingForTrainingSlot"


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass
class Outcome:
    status: SpecialistStatus
    events: list[Event] = field(default_factory=list)
    waiting_for_slot: str | None = None  # why it would train, when no job could start yet


def schedule_due(schedule: str | None, last: datetime | None, now: datetime) -> bool:
    """Whether the cron ``schedule`` fired since the last training started."""
    if schedule is None or last is None:
        return False
    fired: datetime = croniter(schedule, last).get_next(datetime)
    return fired <= now


async def reconcile(
    name: str,
    spec: SpecialistSpec,
    pool: PoolFacts,
    status: SpecialistStatus,
    io: FlywheelIO,
    *,
    now: datetime,
    trigger: str | None = None,
    job_options: dict[str, Any] | None = None,
) -> Outcome:
    """One pass over a Specialist; ``trigger`` is the value of its ``protege.dev/train`` annotation.

    ``job_options``: further JobSpec fields for its jobs (``max_steps`` for smoke runs).
    """
    outcome = Outcome(status.model_copy(deep=True))
    current = outcome.status
    if spec.suspend:
        return _summarize(outcome, spec, now, suspended=True)
    task = await io.resolve_task(spec.task)
    if task is None:
        current.task_id, current.examples = None, 0
        return _summarize(outcome, spec, now)
    current.task_id, current.examples = task.id, task.examples

    stored_route = await io.read_route(name)
    route = implied_route(name, spec, task.id, current, stored_route, now=now)
    step = _Pass(name, spec, pool, io, now, outcome)
    route = await step.follow_training(route)
    route = await step.follow_rollout(route)
    route = route.model_copy(update={"confidence_checks": _confidence_checks(current, route)})
    _record_route(current, route)
    if route != stored_route:  # a transition, or the table lost or changed the route out of band
        await io.write_route(route)
    await step.watch_inputs(route)
    await step.maybe_train(route, task, trigger, job_options or {})
    return _summarize(outcome, spec, now, route=route)


def implied_route(
    name: str,
    spec: SpecialistSpec,
    task_id: str,
    status: SpecialistStatus,
    stored: SpecialistRoute | None,
    *,
    now: datetime,
) -> SpecialistRoute:
    """The route a Specialist's status implies, before this pass's transitions (pure).

    Its task and policies come from its spec; its versions (``active``, ``previous``, the
    candidate at its stage and traffic share) from its status, the rollout's source of truth:
    the routing table is derived from it, so a route deleted or edited out of band is written
    again as the status says. ``stored``, the table's route, gives what the status does not hold:
    the versions that failed to load; and, for a status written before it recorded the previous
    version and the candidate's step, those while they agree with its active and candidate versions.
    """
    step = status.candidate_step
    candidate = None
    if status.candidate_version is not None:
        if step is not None:
            candidate = Candidate(
                version=status.candidate_version,
                stage=RolloutStage(step.stage),
                traffic_percent=step.traffic_percent,
                since=step.since,
            )
        elif stored is not None and stored.candidate and stored.candidate.version == status.candidate_version:
            candidate = stored.candidate
        if candidate is None:  # its step unrecorded and the table's gone: shadow again, from now
            candidate = Candidate(version=status.candidate_version, stage=RolloutStage.SHADOW, since=now)
    previous = status.previous_version
    if previous is None and stored is not None and status.active_version is not None:
        previous = stored.previous if stored.active == status.active_version else None
    return SpecialistRoute(
        specialist=name,
        tenant=spec.task.tenant,
        task_id=task_id,
        fallback=spec.fallback,
        metric=spec.evaluation.metric,
        teacher_sample_rate=spec.rollout.teacher_sample_rate,
        active=status.active_version,
        previous=previous,
        candidate=candidate,
        failed=stored.failed if stored else [],
    )


def _record_route(status: SpecialistStatus, route: SpecialistRoute) -> None:
    """The route's versions into the status: what :func:`implied_route` derives the route from."""
    candidate = route.candidate
    status.active_version, status.previous_version = route.active, route.previous
    status.candidate_version = candidate.version if candidate else None
    status.candidate_step = (
        CandidateStep(
            stage="canary" if candidate.stage is RolloutStage.CANARY else "shadow",
            traffic_percent=candidate.traffic_percent,
            since=candidate.since,
        )
        if candidate
        else None
    )


def _live(version: str, seen: RolloutObservation) -> LiveAgreement | None:
    est = seen.estimate
    if est is None:
        return None
    return LiveAgreement(
        version=version,
        stage=seen.stage.value,
        calls=est.calls,
        agreement=round(est.mean, 4),
        low=round(est.low, 4),
        high=round(est.high, 4),
        confidence=est.confidence,
    )


def _drift(est: Estimate | None) -> InputDrift | None:
    if est is None:
        return None
    return InputDrift(
        calls=est.calls,
        novel=round(est.mean, 4),
        low=round(est.low, 4),
        high=round(est.high, 4),
        confidence=est.confidence,
        expected=EXPECTED_NOVEL_SHARE,
    )


def _confidence_checks(status: SpecialistStatus, route: SpecialistRoute) -> dict[str, ConfidenceCheck]:
    """The calibrated fallback checks of the versions the route serves, by version."""
    return {
        version: entry.confidence_check
        for version in route.versions
        if (entry := _version(status, version)) is not None and entry.confidence_check is not None
    }


def _training(status: SpecialistStatus) -> SpecialistVersion | None:
    return next((v for v in reversed(status.versions) if v.state is VersionState.TRAINING), None)


def _version(status: SpecialistStatus, version: str | None) -> SpecialistVersion | None:
    return next((v for v in reversed(status.versions) if version and v.version == version), None)


@dataclass
class _Pass:
    """One reconcile pass over one Specialist: what it acts on, and what it has done."""

    name: str
    spec: SpecialistSpec
    pool: PoolFacts
    io: FlywheelIO
    now: datetime
    outcome: Outcome
    read: dict[str, tuple[datetime | None, Sequence[CallRecord]]] = field(default_factory=dict)

    async def records(self, tenant: str, since: datetime | None) -> Sequence[CallRecord]:
        """The tenant's calls, from ``since`` or earlier: one read of the call log a pass, from the
        earliest time a step needs (the watch window at least), shared by the rollout, the serving
        watch and the drift; each filters the calls by its own time."""
        window = self.now - timedelta(minutes=self.spec.rollout.watch_minutes)
        start = None if since is None else min(since, window)
        cached = self.read.get(tenant)
        if cached is None or (cached[0] is not None and (start is None or start < cached[0])):
            cached = self.read[tenant] = (start, await self.io.records(tenant, start))
        return cached[1]

    async def follow_training(self, route: SpecialistRoute) -> SpecialistRoute:
        outcome, name, spec, io, now = self.outcome, self.name, self.spec, self.io, self.now
        status = outcome.status
        if _training(status) is None:  # adopt a job a crashed predecessor started but did not record
            known = {v.job_name for v in status.versions}
            for job_name in await io.running_jobs(name):
                if job_name not in known:
                    status.versions.append(
                        SpecialistVersion(
                            state=VersionState.TRAINING,
                            job_name=job_name,
                            created_at=now,
                            message="adopted a running job",
                        )
                    )
        version = _training(status)
        if version is None or version.job_name is None:
            return route
        state = await io.job_state(version.job_name)
        if state.phase is JobPhase.RUNNING:
            return route
        result = await io.job_result(version.job_name)
        if result is None or result.error is not None or result.scores is None or not result.adapter_version:
            why = (result.error if result else None) or state.message or f"the job ended {state.phase.value}"
            version.state, version.message = VersionState.FAILED, f"training failed: {why}"
            outcome.events.append(Event("TrainingFailed", f"{version.job_name}: {why}", warning=True))
            return route
        scores = result.scores
        version.version = result.adapter_version
        version.adapter_uri = result.adapter_uri
        version.dataset_version = result.dataset_version or version.dataset_version
        version.scores = scores
        version.confidence_check = result.confidence_check
        verdict = gate(spec.evaluation, scores)  # the one gate: the Specialist's spec as it is now
        reasons = "; ".join(verdict.reasons)
        if not verdict.passed:
            version.state, version.message = VersionState.REJECTED, f"failed the gate: {reasons}"
            outcome.events.append(Event("CandidateRejected", f"{version.version}: {reasons}", warning=True))
            return route
        if version.version == route.active:
            version.state, version.message = VersionState.RETIRED, "identical to the active version"
            return route
        version.state, version.message = VersionState.SHADOW, f"passed the gate: {reasons}"
        outcome.events.append(Event("CandidateShadowing", f"{version.version} passed the gate: {reasons}"))
        return route.model_copy(
            update={"candidate": Candidate(version=version.version, stage=RolloutStage.SHADOW, since=now)}
        )

    async def follow_rollout(self, route: SpecialistRoute) -> SpecialistRoute:
        outcome, spec, now = self.outcome, self.spec, self.now
        candidate = route.candidate
        if candidate is None:
            return await self.watch_serving(route)
        records = await self.records(route.tenant, candidate.since)
        seen = observe(records, route, spec.rollout)  # the calls since candidate.since
        assert seen is not None  # there is a candidate
        outcome.status.live = _live(candidate.version, seen)
        move = next_rollout_move(spec.rollout, seen)
        entry = _version(outcome.status, candidate.version)
        if move.action is RolloutAction.WAIT:
            if entry is not None:
                entry.message = move.reason
            return route
        previous = _version(outcome.status, route.active)
        moved = apply(route, move, now)
        if entry is not None:
            entry.message = move.reason
            entry.state = {
                RolloutAction.ADVANCE: VersionState.CANARY,
                RolloutAction.PROMOTE: VersionState.SERVING,
                RolloutAction.ROLLBACK: VersionState.ROLLED_BACK,
            }[move.action]
        if move.action is RolloutAction.PROMOTE:
            if previous is not None:
                previous.state, previous.message = VersionState.RETIRED, f"replaced by {candidate.version}"
            outcome.events.append(Event("Promoted", f"{candidate.version} serves all calls: {move.reason}"))
        elif move.action is RolloutAction.ROLLBACK:
            outcome.events.append(Event("RolledBack", f"{candidate.version}: {move.reason}", warning=True))
        else:
            outcome.events.append(
                Event("CanaryStep", f"{candidate.version} answers {move.traffic_percent}%: {move.reason}")
            )
        return moved

    async def watch_serving(self, route: SpecialistRoute) -> SpecialistRoute:
        """The serving version's live agreement; below the bar, back to the previous one and retrain."""
        outcome, spec, now = self.outcome, self.spec, self.now
        active = route.active
        if active is None:
            outcome.status.live = None
            return route
        since = now - timedelta(minutes=spec.rollout.watch_minutes)
        seen = watch(await self.records(route.tenant, since), route, spec.rollout, since)
        assert seen is not None  # a version serves
        outcome.status.live = _live(active, seen)
        move = next_rollout_move(spec.rollout, seen)
        if move.action is not RolloutAction.ROLLBACK:
            return route
        moved = apply(route, move, now)
        entry, previous = _version(outcome.status, active), _version(outcome.status, route.previous)
        if entry is not None:
            entry.state, entry.message = VersionState.ROLLED_BACK, f"rolled back while serving: {move.reason}"
        if previous is not None:
            previous.state, previous.message = VersionState.SERVING, f"serves again: {active} was rolled back"
        to = moved.active or "the teacher"
        outcome.events.append(Event("RolledBack", f"{active} (serving) → {to}: {move.reason}", warning=True))
        outcome.status.retrain_reason = f"{active} was rolled back while serving"
        outcome.status.live = None
        return moved

    async def watch_inputs(self, route: SpecialistRoute) -> None:
        """The task's input drift since its newest training started, within the watch window.

        Once it is surely over data.maxInputDrift, a warning; the retraining it calls for starts
        when new examples arrived (:meth:`maybe_train`).
        """
        outcome, spec, now = self.outcome, self.spec, self.now
        status = outcome.status
        newest = status.versions[-1] if status.versions else None
        if newest is None:  # nothing trained yet: no training data to drift from
            status.drift = None
            return
        window = now - timedelta(minutes=spec.rollout.watch_minutes)
        since = max(window, newest.created_at) if newest.created_at is not None else window
        records = await self.records(route.tenant, window)
        was_over = drift_retrain_reason(spec.data, status.drift) is not None
        status.drift = _drift(input_drift(records, route.task_id, spec.rollout.confidence, since))
        reason = drift_retrain_reason(spec.data, status.drift)
        if reason is not None and not was_over:
            outcome.events.append(Event("InputDrift", reason, warning=True))

    async def maybe_train(
        self, route: SpecialistRoute, task: TaskData, trigger: str | None, job_options: dict[str, Any]
    ) -> None:
        outcome, name, spec, pool, io, now = self.outcome, self.name, self.spec, self.pool, self.io, self.now
        status = outcome.status
        newest = status.versions[-1] if status.versions else None
        baseline = newest.examples if newest is not None and newest.examples is not None else 0
        status.new_examples = max(0, task.examples - baseline) if newest else task.examples
        fresh_trigger = trigger if trigger and trigger != status.handled_trigger else None
        busy = _training(status) is not None or route.candidate is not None
        decision = should_train(
            spec.data,
            spec.training,
            examples=task.examples,
            new_examples=status.new_examples,
            has_version=newest is not None,
            job_running=busy,
            manual_trigger=fresh_trigger is not None,
            schedule_due=schedule_due(spec.training.schedule, newest.created_at if newest else None, now),
            retrain_reason=status.retrain_reason or drift_retrain_reason(spec.data, status.drift),
        )
        if decision.train and not await io.training_slot_free(spec.training):
            outcome.waiting_for_slot = decision.reason  # a trigger stays fresh until its job starts
            return
        if fresh_trigger is not None and not busy:
            status.handled_trigger = fresh_trigger
            if not decision.train:
                outcome.events.append(Event("TriggerIgnored", decision.reason, warning=True))
        if not decision.train:
            return
        dataset = await io.build_dataset(task.id, spec.data)
        job = JobSpec(
            specialist=name,
            task=task.id,
            dataset_version=dataset.version,
            base_model=pool.base_model,
            base_model_revision=pool.base_model_revision,
            max_lora_rank=pool.max_lora_rank,
            training=spec.training,
            evaluation=spec.evaluation,
            **job_options,
        )
        job_name = await io.start_job(job)
        if any(v.job_name == job_name for v in status.versions):
            return  # this very job ran before: its result is already recorded
        status.versions.append(
            SpecialistVersion(
                state=VersionState.TRAINING,
                dataset_version=dataset.version,
                job_name=job_name,
                examples=task.examples,
                created_at=now,
                message=decision.reason,
            )
        )
        status.new_examples, status.retrain_reason = 0, None
        outcome.events.append(
            Event("TrainingStarted", f"{job_name} on {dataset.examples} examples: {decision.reason}")
        )


def _traffic_share(route: SpecialistRoute | None) -> int:
    if route is None:
        return 0
    if route.active is not None:
        return 100
    candidate = route.candidate
    return candidate.traffic_percent if candidate and candidate.stage is RolloutStage.CANARY else 0


def _phase(status: SpecialistStatus, route: SpecialistRoute | None, suspended: bool) -> SpecialistPhase:
    if suspended:
        return SpecialistPhase.SUSPENDED
    if _training(status) is not None:
        return SpecialistPhase.TRAINING
    if route is not None and route.candidate is not None:
        return (
            SpecialistPhase.SHADOW if route.candidate.stage is RolloutStage.SHADOW else SpecialistPhase.CANARY
        )
    if route is not None and route.active is not None:
        return SpecialistPhase.SERVING
    if status.versions and status.versions[-1].state is VersionState.FAILED:
        return SpecialistPhase.FAILED
    return SpecialistPhase.COLLECTING_DATA


def _summarize(
    outcome: Outcome,
    spec: SpecialistSpec,
    now: datetime,
    *,
    suspended: bool = False,
    route: SpecialistRoute | None = None,
) -> Outcome:
    status = outcome.status
    status.phase = _phase(status, route, suspended)
    status.traffic_share = _traffic_share(route)
    active = _version(status, status.active_version)
    status.score_vs_teacher = active.scores.relative_to_teacher if active and active.scores else None
    keep = {status.active_version, status.candidate_version}
    overflow = len(status.versions) - KEEP_VERSIONS
    if overflow > 0:  # drop the oldest, never the active or candidate version
        dropped = [v for v in status.versions if v.version not in keep][:overflow]
        status.versions = [v for v in status.versions if v not in dropped]

    def condition(kind: str, ok: bool, reason: str, message: str) -> None:
        state = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        status.conditions = set_condition(
            status.conditions,
            kind,
            state,
            reason,
            message=message,
            observed_generation=status.observed_generation,
            now=now,
        )

    if status.task_id is None and not suspended:
        selector = spec.task.id or "the selector's match"
        condition(
            "DataReady",
            False,
            "TaskNotFound",
            f"no discovered task matches {selector} for tenant {spec.task.tenant}; "
            "`protege tasks list` shows the tasks (discovery runs as calls are curated)",
        )
    elif not suspended:
        enough = status.examples >= spec.data.min_examples
        condition(
            "DataReady",
            enough,
            "EnoughExamples" if enough else "CollectingData",
            f"{status.examples}/{spec.data.min_examples} curated examples of task {status.task_id}",
        )
    newest = status.versions[-1] if status.versions else None
    if outcome.waiting_for_slot is not None:
        message = f"{outcome.waiting_for_slot}; waiting for a free training slot"
        condition("Trained", False, WAITING_FOR_SLOT, message)
    elif newest is not None:
        trained = newest.state not in (VersionState.TRAINING, VersionState.FAILED)
        condition("Trained", trained, newest.state.value, newest.message)
    serving = status.active_version is not None
    condition(
        "Ready",
        serving,
        "Serving" if serving else status.phase.value,
        f"{status.active_version} serves {status.traffic_share}% of the task's calls"
        if serving
        else (newest.message if newest else "no version trained yet"),
    )
    status.conditions = set_progress(
        status.conditions,
        reconciling=_reconciling(status, newest, route),
        stalled=(newest.state.value, newest.message)
        if status.phase is SpecialistPhase.FAILED and newest is not None
        else None,
        observed_generation=status.observed_generation,
        now=now,
    )
    return outcome


def _reconciling(
    status: SpecialistStatus, newest: SpecialistVersion | None, route: SpecialistRoute | None
) -> tuple[str, str] | None:
    """What the Specialist is on its way to, for kstatus: a job training, a candidate rolling out.

    Collecting data is not reconciling: the spec is acted on and the rest waits for the agent's
    traffic, which may take days (GitOps tools would hold their sync waves that long).
    """
    if status.phase is SpecialistPhase.TRAINING and newest is not None:
        return "Training", newest.message
    candidate = route.candidate if route is not None else None
    if status.phase in (SpecialistPhase.SHADOW, SpecialistPhase.CANARY) and candidate is not None:
        if candidate.stage is RolloutStage.CANARY:
            share = candidate.traffic_percent
            return "Canary", f"rolling out {candidate.version}: it answers {share}% of the calls"
        return "Shadow", f"rolling out {candidate.version}: in shadow, its answers scored and not returned"
    return None
