"""The flywheel on one machine: the operator's decisions with local I/O.

The same step as the operator (:func:`protege.flywheel.specialist.reconcile`), with:

- training jobs submitted to a local Ray through its job submission API, with the job's
  deterministic name as the submission id (submitting it again finds the first);
- the routing table in a JSON file the gateway's router re-reads (``router.table``),
  replaced atomically;
- each Specialist's status in ``<state>/status/<name>.json`` (written atomically after
  every pass), so a restarted driver carries on where it stopped;
- Specialists as manifests (``kind: Specialist``) in ``<state>/specialists/``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from protege.api.jobs import JobSpec
from protege.api.meta import quantity_value, spec_problems
from protege.api.naming import NAME_RULE, is_dns_1035_label
from protege.api.routes import RoutingTable, SpecialistRoute
from protege.api.specialist import SpecialistSpec, SpecialistStatus, TrainingSpec
from protege.capture.connection import NatsTarget
from protege.flywheel.data import StoreData, StoreFacts
from protege.flywheel.specialist import (
    Event,
    JobPhase,
    JobState,
    PoolFacts,
    reconcile,
)
from protege.training.submit import RESERVED_CPUS, SPECIALIST, job_environment, submit

_RAY_PHASES = {
    "PENDING": JobPhase.RUNNING,
    "RUNNING": JobPhase.RUNNING,
    "SUCCEEDED": JobPhase.SUCCEEDED,
    "FAILED": JobPhase.FAILED,
    "STOPPED": JobPhase.FAILED,
}


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, path)


class RayJobs:
    """Training jobs on a (local) Ray cluster, named by the job's spec hash.

    With ``job_cpus`` (what the cluster can give training), a job reserves the CPUs its
    Specialist asks for, at most that many: jobs then queue instead of starving each other
    and the serving replica, and :meth:`slot_free` says whether one more would start now.
    Without it, jobs reserve nothing. With ``niceness``, a job runs
    at that CPU priority: on a machine that also serves (Ray runs its workers, the serving
    replica among them, at niceness 15), 19 keeps answers ahead of training.
    """

    def __init__(
        self,
        address: str,
        headers: dict[str, str] | None = None,
        job_cpus: float | None = None,
        niceness: int | None = None,
    ) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(address, headers=headers)
        self.job_cpus, self.niceness = job_cpus, niceness

    def start(self, job: JobSpec) -> str:
        reserved = self._reserved_cpus(job.training)
        return submit(self.client, job, env=job_environment(), reserved_cpus=reserved, niceness=self.niceness)

    def _reserved_cpus(self, training: TrainingSpec) -> float | None:
        if self.job_cpus is None or training.workers > 1:  # Ray Train's workers reserve their own
            return None
        return min(quantity_value(training.resources.cpu), self.job_cpus)

    def slot_free(self, training: TrainingSpec) -> bool:
        """Whether a job with these resources would start now rather than queue behind others."""
        wanted = self._reserved_cpus(training)
        if wanted is None or self.job_cpus is None:
            return True
        held = sum(float((job.metadata or {}).get(RESERVED_CPUS, 0)) for job in self._live_jobs())
        return held + wanted <= self.job_cpus

    def state(self, name: str) -> JobState:
        try:
            info = self.client.get_job_info(name)
        except RuntimeError:  # the client's way of saying 404
            return JobState(JobPhase.MISSING, f"no Ray job {name}")
        return JobState(_RAY_PHASES.get(str(info.status.value), JobPhase.RUNNING), info.message or "")

    def _live_jobs(self) -> list[Any]:
        """Pending or running jobs (Ray's JobDetails)."""
        return [
            j for j in self.client.list_jobs() if _RAY_PHASES.get(str(j.status.value)) is JobPhase.RUNNING
        ]

    def running(self, specialist: str) -> list[str]:
        return sorted(
            job.submission_id
            for job in self._live_jobs()
            if job.submission_id and (job.metadata or {}).get(SPECIALIST) == specialist
        )


class RouteFile:
    """The routing table as a file; each write replaces it whole (the router never sees half)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def read(self) -> RoutingTable:
        if not self.path.exists():
            return RoutingTable()
        return RoutingTable.model_validate_json(self.path.read_text())

    async def update(self, specialist: str, route: SpecialistRoute | None) -> None:
        """Put ``route`` in the table as ``specialist``'s, or take ``specialist`` out (None)."""
        async with self._lock:
            table = self.read()
            updated = table.replacing(specialist, route)
            if updated != table:
                write_atomically(self.path, updated.model_dump_json(indent=1))


class LocalFlywheelIO(StoreFacts):
    def __init__(self, data: StoreData, jobs: RayJobs, routes: RouteFile, nats_url: NatsTarget) -> None:
        super().__init__(data, nats_url)
        self.jobs, self.routes = jobs, routes

    async def start_job(self, job: JobSpec) -> str:
        return await asyncio.to_thread(self.jobs.start, job)

    async def job_state(self, name: str) -> JobState:
        return await asyncio.to_thread(self.jobs.state, name)

    async def running_jobs(self, specialist: str) -> list[str]:
        return await asyncio.to_thread(self.jobs.running, specialist)

    async def training_slot_free(self, training: TrainingSpec) -> bool:
        return await asyncio.to_thread(self.jobs.slot_free, training)

    async def read_route(self, specialist: str) -> SpecialistRoute | None:
        return self.routes.read().for_specialist(specialist)

    async def write_route(self, route: SpecialistRoute) -> None:
        await self.routes.update(route.specialist, route)


@dataclass
class Pass:
    """What one pass over every Specialist did."""

    statuses: dict[str, SpecialistStatus] = field(default_factory=dict)
    events: list[tuple[str, Event]] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # manifests gone: routes and statuses removed


class LocalDriver:
    """Specialists from ``<state>/specialists/*.yaml``, statuses in ``<state>/status/``."""

    def __init__(
        self, state: Path, io: LocalFlywheelIO, pool: PoolFacts, job_options: dict[str, Any] | None = None
    ) -> None:
        self.state, self.io, self.pool, self.job_options = state, io, pool, job_options or {}
        (state / "specialists").mkdir(parents=True, exist_ok=True)
        (state / "status").mkdir(parents=True, exist_ok=True)

    def specialists(self) -> dict[str, tuple[SpecialistSpec | None, str]]:
        """name → (spec, "") or (None, what is wrong with its manifest)."""
        found: dict[str, tuple[SpecialistSpec | None, str]] = {}
        for path in sorted((self.state / "specialists").glob("*.yaml")):
            document = yaml.safe_load(path.read_text()) or {}
            name = str((document.get("metadata") or {}).get("name") or path.stem)
            if not is_dns_1035_label(name):  # what the CRD's rule refuses on a cluster
                found[name] = (None, f"{path}: {NAME_RULE}; it is {name!r}")
                continue
            try:
                found[name] = (SpecialistSpec.model_validate(document.get("spec") or {}), "")
            except ValidationError as error:
                found[name] = (None, f"{path}: {spec_problems(error)}")
        return found

    def add(self, name: str, spec: SpecialistSpec) -> Path:
        """Write a Specialist manifest (as `kubectl apply` would take it)."""
        path = self.state / "specialists" / f"{name}.yaml"
        document = {
            "apiVersion": "protege.dev/v1alpha1",
            "kind": "Specialist",
            "metadata": {"name": name},
            "spec": spec.to_kube(),
        }
        write_atomically(path, yaml.safe_dump(document, sort_keys=False))
        return path

    def status(self, name: str) -> SpecialistStatus:
        path = self.state / "status" / f"{name}.json"
        return SpecialistStatus.model_validate_json(path.read_text()) if path.exists() else SpecialistStatus()

    async def step(self, trigger: dict[str, str] | None = None) -> Pass:
        """One pass over every Specialist; ``trigger`` maps names to manual trigger values."""
        done = Pass()
        specialists = self.specialists()
        for name, (spec, problem) in specialists.items():
            if spec is None:
                done.invalid[name] = problem
                continue
            outcome = await reconcile(
                name,
                spec,
                self.pool,
                self.status(name),
                self.io,
                now=datetime.now(UTC).replace(microsecond=0),
                trigger=(trigger or {}).get(name),
                job_options=self.job_options,
            )
            write_atomically(self.state / "status" / f"{name}.json", outcome.status.model_dump_json(indent=1))
            done.statuses[name] = outcome.status
            done.events += [(name, event) for event in outcome.events]
        await self.forget_removed(set(specialists), done)
        return done

    async def forget_removed(self, present: set[str], done: Pass) -> None:
        """A Specialist whose manifest was removed is deleted, as on a cluster: its route leaves the
        table (its calls go to the teacher) and its status goes; its adapters stay in the store."""
        routes = self.io.routes
        for route in routes.read().routes:
            if route.specialist not in present:
                await routes.update(route.specialist, None)
                done.removed.append(route.specialist)
        for path in (self.state / "status").glob("*.json"):
            if path.stem not in present:
                path.unlink(missing_ok=True)
