"""The flywheel on one machine: the operator's lifecycle with local I/O.

The same pass as the operator's (:func:`protege.flywheel.lifecycle.drive`), with:

- training jobs submitted to a local Ray through its job submission API, with the job's
  deterministic name as the submission id (submitting it again finds the first);
- the routing table in a JSON file the gateway's router re-reads (``router.table``),
  replaced atomically;
- each Specialist's status in ``<state>/status/<name>.json`` (replaced atomically when a
  pass changed it), so a restarted driver carries on where it stopped;
- Specialists as manifests (``kind: Specialist``) in ``<state>/specialists/``, of one pool
  (the stack's); removing a manifest deletes the Specialist (:meth:`LocalDriver.forget_removed`),
  as its last valid manifest's ``spec.deletionPolicy`` says (a ``Retain`` one is remembered in
  ``<state>/retain/<name>`` while the manifest exists, since a removed manifest no longer tells).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from protege.api.jobs import JobSpec
from protege.api.meta import quantity_value
from protege.api.naming import NAME_RULE, is_dns_1035_label
from protege.api.routes import RoutingTable
from protege.api.specialist import DeletionPolicy, SpecialistSpec, SpecialistStatus, TrainingSpec
from protege.capture.connection import NatsTarget
from protege.flywheel.data import StoreData
from protege.flywheel.lifecycle import DriverIO, Pool, RouteTable, delete, drive, parse_spec
from protege.flywheel.specialist import Event, JobPhase, JobState, PoolFacts
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
    Without it, jobs reserve nothing. With ``yield_cpus``, a job trains only on CPU time nothing
    else wants (:func:`protege.training.job.yield_cpus`): for a machine that also serves.
    """

    def __init__(
        self,
        address: str,
        headers: dict[str, str] | None = None,
        job_cpus: float | None = None,
        yield_cpus: bool = False,
    ) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(address, headers=headers)
        self.job_cpus, self.yield_cpus = job_cpus, yield_cpus

    def start(self, job: JobSpec) -> str:
        reserved = self._reserved_cpus(job.training)
        return submit(
            self.client, job, env=job_environment(), reserved_cpus=reserved, yield_cpus=self.yield_cpus
        )

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
        return self._ended_and_live(specialist)[1]

    def _ended_and_live(self, specialist: str) -> tuple[list[str], list[str]]:
        """The Specialist's jobs (by their metadata, never a name prefix): ended, and not yet."""
        ended: list[str] = []
        live: list[str] = []
        for job in self.client.list_jobs():
            if job.submission_id and (job.metadata or {}).get(SPECIALIST) == specialist:
                phase = _RAY_PHASES.get(str(job.status.value), JobPhase.RUNNING)
                (live if phase is JobPhase.RUNNING else ended).append(job.submission_id)
        return sorted(ended), sorted(live)

    def forget_finished(self, specialist: str, kept: set[str]) -> list[str]:
        """Delete the Specialist's ended jobs that ``kept`` does not name (as the operator deletes its
        RayJobs); their results are in the store."""
        ended, _ = self._ended_and_live(specialist)
        return [name for name in ended if name not in kept and self.client.delete_job(name)]

    def forget(self, specialist: str) -> bool:
        """A deleted Specialist's jobs, as its RayJobs go with it on Kubernetes: stop the running ones,
        delete the ended ones. Whether none is left (a stopped job ends a moment later)."""
        ended, live = self._ended_and_live(specialist)
        for name in live:
            self.client.stop_job(name)
        for name in ended:
            self.client.delete_job(name)
        return not live


class LocalJobs:
    """:class:`RayJobs` as the lifecycle's :class:`~protege.flywheel.lifecycle.JobLauncher` (the Ray
    client blocks: each call in a thread)."""

    def __init__(self, jobs: RayJobs) -> None:
        self.ray = jobs

    async def start(self, job: JobSpec) -> str:
        return await asyncio.to_thread(self.ray.start, job)

    async def state(self, name: str) -> JobState:
        return await asyncio.to_thread(self.ray.state, name)

    async def running(self, specialist: str) -> list[str]:
        return await asyncio.to_thread(self.ray.running, specialist)

    async def slot_free(self, training: TrainingSpec) -> bool:
        return await asyncio.to_thread(self.ray.slot_free, training)

    async def forget_finished(self, specialist: str, kept: set[str]) -> list[str]:
        return await asyncio.to_thread(self.ray.forget_finished, specialist, kept)


class RouteFile(RouteTable):
    """The routing table as a file; each write replaces it whole (the router never sees half)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def read(self) -> RoutingTable:
        if not self.path.exists():
            return RoutingTable()
        return RoutingTable.model_validate_json(self.path.read_text())

    async def fetch(self) -> tuple[RoutingTable, str | None]:
        return self.read(), None

    async def store(self, table: RoutingTable, version: str | None) -> bool:
        write_atomically(self.path, table.model_dump_json(indent=1))
        return True


class LocalFlywheelIO(DriverIO):
    """The flywheel's I/O on one machine: jobs on a local Ray, the routing table in a file."""

    def __init__(self, data: StoreData, jobs: RayJobs, routes: RouteFile, nats_url: NatsTarget) -> None:
        super().__init__(data, nats_url, LocalJobs(jobs), routes)
        self.ray, self.route_file = jobs, routes


class StatusFile:
    """A Specialist's status as a file, replaced whole."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> SpecialistStatus:
        return (
            SpecialistStatus.model_validate_json(self.path.read_text())
            if self.path.exists()
            else SpecialistStatus()
        )

    async def save(self, status: SpecialistStatus) -> None:
        write_atomically(self.path, status.model_dump_json(indent=1))


@dataclass
class Pass:
    """What one pass over every Specialist did."""

    statuses: dict[str, SpecialistStatus] = field(default_factory=dict)
    events: list[tuple[str, Event]] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)  # manifests gone: routes and statuses removed


class LocalDriver:
    """Specialists from ``<state>/specialists/*.yaml``, statuses in ``<state>/status/``; the one pool
    is ``pool_name``'s (a Specialist of another pool waits, its status saying so)."""

    def __init__(
        self,
        state: Path,
        io: LocalFlywheelIO,
        pool: PoolFacts,
        job_options: dict[str, Any] | None = None,
        *,
        pool_name: str = "local",
    ) -> None:
        self.state, self.io, self.pool, self.job_options = state, io, pool, job_options or {}
        self.pool_name = pool_name
        (state / "specialists").mkdir(parents=True, exist_ok=True)
        (state / "status").mkdir(parents=True, exist_ok=True)
        (state / "retain").mkdir(parents=True, exist_ok=True)

    def specialists(self) -> dict[str, tuple[SpecialistSpec | None, str]]:
        """name → (spec, "") or (None, what is wrong with its manifest)."""
        found: dict[str, tuple[SpecialistSpec | None, str]] = {}
        for path in sorted((self.state / "specialists").glob("*.yaml")):
            document = yaml.safe_load(path.read_text()) or {}
            name = str((document.get("metadata") or {}).get("name") or path.stem)
            if not is_dns_1035_label(name):  # what the CRD's rule refuses on a cluster
                found[name] = (None, f"{path}: {NAME_RULE}; it is {name!r}")
                continue
            spec = parse_spec(document.get("spec") or {})
            found[name] = (spec, "") if isinstance(spec, SpecialistSpec) else (None, f"{path}: {spec}")
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

    def status_file(self, name: str) -> StatusFile:
        return StatusFile(self.state / "status" / f"{name}.json")

    def status(self, name: str) -> SpecialistStatus:
        return self.status_file(name).read()

    def _retain_marker(self, name: str) -> Path:
        return self.state / "retain" / name

    def remember_policy(self, name: str, spec: SpecialistSpec) -> None:
        """Remember a Retain ``spec.deletionPolicy`` for when the manifest is gone (a marker file)."""
        marker = self._retain_marker(name)
        if spec.deletion_policy is DeletionPolicy.RETAIN:
            if not marker.exists():
                marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def remembered_policy(self, name: str) -> DeletionPolicy:
        """The deletion policy of the Specialist's last valid manifest."""
        return DeletionPolicy.RETAIN if self._retain_marker(name).exists() else DeletionPolicy.DELETE

    async def find_pool(self, name: str) -> Pool | None:
        return Pool(self.pool, self.io) if name == self.pool_name else None

    async def step(self, trigger: dict[str, str] | None = None) -> Pass:
        """One pass over every Specialist; ``trigger`` maps names to manual trigger values."""
        done = Pass()
        specialists = self.specialists()
        for name, (spec, problem) in specialists.items():
            if spec is None:
                done.invalid[name] = problem
            else:
                self.remember_policy(name, spec)
            status = self.status_file(name)
            driven = await drive(
                name,
                spec if spec is not None else problem,
                status.read(),
                find_pool=self.find_pool,
                sink=status,
                where="in this stack",
                fix=f"fix spec.pool: this stack serves pool {self.pool_name!r}",
                trigger=(trigger or {}).get(name),
                job_options=self.job_options,
            )
            done.statuses[name] = driven.status
            done.events += [(name, event) for event in driven.events]
        await self.forget_removed(set(specialists), done)
        return done

    async def forget_removed(self, present: set[str], done: Pass) -> None:
        """A Specialist whose manifest was removed is deleted, as on a cluster: its route leaves the
        table (its calls go to the teacher), its job results leave the store, and its adapters and
        reports too unless its last valid manifest's ``spec.deletionPolicy`` was Retain
        (:func:`protege.flywheel.lifecycle.delete`), its jobs are stopped and forgotten (as RayJobs go
        with their owner), and then its status goes (kept until no job of it is left: a stopped job
        ends a moment later), and with it the remembered policy."""
        routes = self.io.route_file
        listed = {route.specialist for route in routes.read().routes}
        statuses = {path.stem for path in (self.state / "status").glob("*.json")}
        retained = {path.name for path in (self.state / "retain").iterdir()}
        for name in sorted((listed | statuses | retained) - present):
            status = self.status_file(name)
            none_left = await asyncio.to_thread(self.io.ray.forget, name)
            policy = self.remembered_policy(name)
            await delete(name, status.read(), routes=routes, store=self.io.data.store, policy=policy)
            if none_left:
                status.path.unlink(missing_ok=True)
                self._retain_marker(name).unlink(missing_ok=True)
            done.removed.append(name)
