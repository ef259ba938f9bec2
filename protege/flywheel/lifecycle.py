"""A Specialist's lifecycle around the decision core, the same for both drivers.

:func:`drive` is one pass over one Specialist: an invalid spec and a missing pool become its
status (kstatus conditions naming why), otherwise :func:`protege.flywheel.specialist.reconcile`
decides and acts, the finished jobs its status no longer names are forgotten, and the status
is saved only when it changed (no write, so no watch event, for nothing). :func:`delete` takes
a deleted Specialist out of its pool's routes and deletes its job results, and its adapters and
reports unless its ``spec.deletionPolicy`` is ``Retain``.

A driver adapts these to where it runs: the operator (:mod:`protege.operator.main`) to kopf's
handlers, the status subresource and RayJobs; the local driver (:mod:`protege.flywheel.local`)
to manifests in a directory, status files and a local Ray. Each gives:

- a :class:`JobLauncher` (RayJobs, or jobs on a local Ray) and a :class:`RouteTable` (the pool's
  ConfigMap, or a file): :class:`DriverIO` makes a :class:`FlywheelIO` of them and the store;
- a way to find a Specialist's pool by name (``find_pool``);
- a :class:`StatusSink` that saves a Specialist's status.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from protege.api.jobs import ADAPTER_KIND, REPORT_KIND, RESULTS_AREA, JobSpec
from protege.api.meta import ConditionStatus, set_condition, set_progress, spec_or_problems
from protege.api.routes import RoutingTable, SpecialistRoute
from protege.api.specialist import (
    DeletionPolicy,
    SpecialistPhase,
    SpecialistSpec,
    SpecialistStatus,
    TrainingSpec,
)
from protege.capture.connection import NatsTarget
from protege.flywheel.data import StoreData, StoreFacts
from protege.flywheel.specialist import Event, JobState, PoolFacts, reconcile
from protege.store.artifacts import ArtifactStore

__all__ = [
    "Driven",
    "DriverIO",
    "JobLauncher",
    "Pool",
    "RouteTable",
    "RoutesConflictError",
    "StatusSink",
    "delete",
    "deletion_policy",
    "drive",
    "invalid_status",
    "missing_pool_status",
    "parse_spec",
]


class JobLauncher(Protocol):
    """Where a driver's training jobs run: KubeRay's RayJobs, or a local Ray's jobs."""

    async def start(self, job: JobSpec) -> str:
        """Start the job (or find it started) and return its deterministic name."""
        ...

    async def state(self, name: str) -> JobState: ...

    async def running(self, specialist: str) -> list[str]: ...

    async def slot_free(self, training: TrainingSpec) -> bool: ...

    async def forget_finished(self, specialist: str, kept: set[str]) -> list[str]:
        """Forget the Specialist's finished jobs that are not in ``kept`` (those its status names);
        their results are in the store. Returns the names forgotten."""
        ...


class RoutesConflictError(RuntimeError):
    """The routing table changed under every one of an update's attempts (:attr:`RouteTable.attempts`)."""


class RouteTable(ABC):
    """One pool's routing table, and its one writer: read whole with its version, one Specialist's
    route put in or taken out, written whole over the version read and only when that changed it
    (the gateways' routers re-read it). One update at a time per table (a lock shared by everything
    in this process that writes it); a table whose store checks versions (a ConfigMap's
    resourceVersion) refuses a write over a stale one, and the update reads it again, at most
    :attr:`attempts` times."""

    attempts = 1  # reads and writes of one update: more where other writers may come in between

    def __init__(self, lock: asyncio.Lock | None = None) -> None:
        self._lock = lock or asyncio.Lock()

    @abstractmethod
    async def fetch(self) -> tuple[RoutingTable, str | None]:
        """The table and its version (None: no version, or no table yet)."""

    @abstractmethod
    async def store(self, table: RoutingTable, version: str | None) -> bool:
        """Write the table over ``version``; False when it changed since (nothing written)."""

    async def route(self, specialist: str) -> SpecialistRoute | None:
        return (await self.fetch())[0].for_specialist(specialist)

    async def update(self, specialist: str, route: SpecialistRoute | None) -> bool:
        """Put ``route`` in the table as ``specialist``'s, or take ``specialist`` out (None);
        whether the table changed."""
        async with self._lock:
            for _ in range(self.attempts):
                table, version = await self.fetch()
                updated = table.replacing(specialist, route)
                if updated == table:
                    return False
                if await self.store(updated, version):
                    return True
            raise RoutesConflictError(
                f"{specialist}'s route not written: the routing table changed under each of "
                f"{self.attempts} attempts"
            )


class DriverIO(StoreFacts):
    """A :class:`~protege.flywheel.specialist.FlywheelIO` of a driver's parts: the store's facts and
    the call log (:class:`StoreFacts`), its job launcher, and the pool's routing table."""

    def __init__(self, data: StoreData, nats_url: NatsTarget, jobs: JobLauncher, routes: RouteTable) -> None:
        super().__init__(data, nats_url)
        self.jobs, self.routes = jobs, routes

    async def start_job(self, job: JobSpec) -> str:
        return await self.jobs.start(job)

    async def job_state(self, name: str) -> JobState:
        return await self.jobs.state(name)

    async def running_jobs(self, specialist: str) -> list[str]:
        return await self.jobs.running(specialist)

    async def training_slot_free(self, training: TrainingSpec) -> bool:
        return await self.jobs.slot_free(training)

    async def read_route(self, specialist: str) -> SpecialistRoute | None:
        return await self.routes.route(specialist)

    async def write_route(self, route: SpecialistRoute) -> None:
        await self.routes.update(route.specialist, route)


class StatusSink(Protocol):
    """Where a Specialist's status goes: its status subresource, or its status file."""

    async def save(self, status: SpecialistStatus) -> None: ...


@dataclass(frozen=True)
class Pool:
    """A Specialist's pool as its driver found it: what its jobs take from it, and the I/O to act with."""

    facts: PoolFacts
    io: DriverIO


@dataclass
class Driven:
    """What one pass over one Specialist did."""

    status: SpecialistStatus
    events: list[Event] = field(default_factory=list)
    reconciled: bool = False  # False: an invalid spec or a missing pool, which its status names
    saved: bool = False  # whether the status changed, and so was saved


def parse_spec(spec: Mapping[str, Any]) -> SpecialistSpec | str:
    """The spec as its model, or what is wrong with it: every wrong field and how to fix it."""
    return spec_or_problems(SpecialistSpec, spec, "Specialist")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def invalid_status(
    status: SpecialistStatus, problem: str, *, generation: int | None, now: datetime | None = None
) -> SpecialistStatus:
    """Failed, not Ready and Stalled (reason InvalidSpec), naming the problem: nothing happens until
    the spec is fixed."""
    current = status.model_copy(deep=True)
    current.phase, current.observed_generation = SpecialistPhase.FAILED, generation
    current.conditions = set_condition(
        current.conditions,
        "Ready",
        ConditionStatus.FALSE,
        "InvalidSpec",
        message=problem,
        observed_generation=generation,
        now=now,
    )
    current.conditions = set_progress(
        current.conditions, stalled=("InvalidSpec", problem), observed_generation=generation, now=now
    )
    return current


def missing_pool_status(
    status: SpecialistStatus,
    pool: str,
    *,
    where: str,
    fix: str = "create it or fix spec.pool",
    generation: int | None,
    now: datetime | None = None,
) -> SpecialistStatus:
    """Pending, not Ready (reason PoolNotFound) and Reconciling: waiting, not stalled, for a GitOps
    sync may create the pool a moment after its Specialists. ``where``: where pools were looked for."""
    current = status.model_copy(deep=True)
    current.phase, current.observed_generation = SpecialistPhase.PENDING, generation
    current.conditions = set_condition(
        current.conditions,
        "Ready",
        ConditionStatus.FALSE,
        "PoolNotFound",
        message=f"no SpecialistPool {pool!r} {where}; {fix}",
        observed_generation=generation,
        now=now,
    )
    current.conditions = set_progress(
        current.conditions,
        reconciling=("PoolNotFound", f"waiting for SpecialistPool {pool!r} {where}"),
        observed_generation=generation,
        now=now,
    )
    return current


async def drive(
    name: str,
    spec: SpecialistSpec | str,
    status: SpecialistStatus,
    *,
    find_pool: Callable[[str], Awaitable[Pool | None]],
    sink: StatusSink,
    where: str,
    fix: str = "create it or fix spec.pool",
    generation: int | None = None,
    now: datetime | None = None,
    trigger: str | None = None,
    job_options: dict[str, Any] | None = None,
) -> Driven:
    """One pass over one Specialist: ``spec`` is its spec, or what is wrong with it (:func:`parse_spec`);
    ``status`` the status it has; ``trigger`` the value of its ``protege.dev/train`` annotation.

    The status is saved (``sink``) only when the pass changed it."""
    now = now or _now()
    if isinstance(spec, str):
        driven = Driven(invalid_status(status, spec, generation=generation, now=now))
    elif (pool := await find_pool(spec.pool)) is None:
        missing = missing_pool_status(status, spec.pool, where=where, fix=fix, generation=generation, now=now)
        driven = Driven(missing)
    else:
        current = status.model_copy(update={"observed_generation": generation})
        outcome = await reconcile(
            name, spec, pool.facts, current, pool.io, now=now, trigger=trigger, job_options=job_options
        )
        driven = Driven(outcome.status, outcome.events, reconciled=True)
        kept = {v.job_name for v in outcome.status.versions if v.job_name}
        await pool.io.jobs.forget_finished(name, kept)  # the jobs of versions past status.versions' window
    if driven.status != status:
        await sink.save(driven.status)
        driven.saved = True
    return driven


async def delete(
    name: str,
    recorded: SpecialistStatus,
    *,
    routes: RouteTable | None,
    store: ArtifactStore,
    policy: DeletionPolicy = DeletionPolicy.DELETE,
) -> None:
    """A deleted Specialist: out of its pool's routes (``routes``; None: no pool, so no route), its
    calls going to the teacher; then the results of the jobs its status recorded (by their names,
    never by a name prefix: another Specialist's name may start with this one's), and, with
    ``policy`` Delete (its ``spec.deletionPolicy``), its adapters and reports; with Retain those
    stay in the store. Safe to repeat. Its jobs are its driver's to end (on Kubernetes, by owner
    reference)."""
    if routes is not None:
        await routes.update(name, None)
    jobs = sorted({v.job_name for v in recorded.versions if v.job_name})

    def delete_stored() -> None:
        if policy is DeletionPolicy.DELETE:
            for kind in (ADAPTER_KIND, REPORT_KIND):
                store.delete(kind, name)
        for job in jobs:
            if store.has_object(RESULTS_AREA, job):  # a job that never finished left none
                store.delete_object(RESULTS_AREA, job)

    await asyncio.to_thread(delete_stored)


def deletion_policy(spec: Mapping[str, Any] | None) -> DeletionPolicy:
    """A deleted Specialist's ``spec.deletionPolicy``, read from its raw spec (it may be invalid
    otherwise): Retain when it says so, Delete (the default) else."""
    value = (spec or {}).get("deletionPolicy")
    return DeletionPolicy.RETAIN if value == DeletionPolicy.RETAIN.value else DeletionPolicy.DELETE
