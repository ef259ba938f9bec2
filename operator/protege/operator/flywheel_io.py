"""The flywheel's I/O on Kubernetes: RayJobs for training (:class:`KubeJobs`), the pool's ConfigMap
for routes (:class:`PoolRoutes`), put together as the lifecycle's :class:`DriverIO`.

Data facts (tasks, example counts, datasets, job results) come from the artifact store
like everywhere else (:class:`protege.flywheel.data.StoreData`); rollout observations
from the call log in NATS.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protege.api.jobs import JobSpec, job_name
from protege.api.pool import SpecialistPoolSpec
from protege.api.routes import RoutingTable
from protege.api.specialist import TrainingSpec
from protege.capture.connection import NatsEndpoint
from protege.flywheel.data import StoreData
from protege.flywheel.lifecycle import DriverIO, RouteTable
from protege.flywheel.specialist import JobPhase, JobState
from protege.operator.kube import ConflictError, KubeClient
from protege.operator.platform import API_GROUP, Owner, Platform
from protege.operator.routing import ROUTES_KEY, render_routes, routes_config_map_name
from protege.operator.training_jobs import render_training_job

_SUCCEEDED, _FAILED = {"SUCCEEDED"}, {"FAILED", "STOPPED"}
# KubeRay's terminal deployment states without a success: the spec refused (name, fields), or the
# job's cluster or submitter gave up (a deadline, a failed submission, the backoff limit)
_DEPLOYMENT_FAILED = {"Failed", "ValidationFailed"}


def job_state(ray_job: dict[str, Any] | None) -> JobState:
    """A RayJob's status (KubeRay v1) as the flywheel sees it: every terminal state without a
    success is a failure, with KubeRay's reason and message."""
    if ray_job is None:
        return JobState(JobPhase.MISSING, "the RayJob is gone")
    status = ray_job.get("status") or {}
    job_status, deployment = status.get("jobStatus"), status.get("jobDeploymentStatus")
    message = status.get("message") or ""
    if job_status in _SUCCEEDED:
        return JobState(JobPhase.SUCCEEDED, message)
    if job_status in _FAILED or deployment in _DEPLOYMENT_FAILED:
        state = deployment if deployment in _DEPLOYMENT_FAILED else job_status
        reason = status.get("reason")
        said = ": ".join(part for part in (reason if reason != state else None, message) if part)
        return JobState(JobPhase.FAILED, f"RayJob {state}" + (f": {said}" if said else ""))
    return JobState(JobPhase.RUNNING, message)


class PoolRoutes(RouteTable):
    """A pool's routing table in its ConfigMap (``owner`` is the pool).

    Every Specialist of the pool read-modify-writes it: each write carries the ``resourceVersion``
    it read (a merge patch with ``metadata.resourceVersion``, which the API server checks), and a
    409 Conflict (another writer in between: another operator replica, a ``kubectl edit``) re-reads
    it and puts the route in again, at most :attr:`attempts` times. The lock serializes this
    process's writers of one table; the resourceVersion guards against everyone else."""

    attempts = 5

    def __init__(self, kube: KubeClient, owner: Owner, lock: asyncio.Lock) -> None:
        super().__init__(lock)
        self.kube, self.owner = kube, owner

    @property
    def _name(self) -> str:
        return routes_config_map_name(self.owner.name)

    async def fetch(self) -> tuple[RoutingTable, str | None]:
        """The table and the ConfigMap's resourceVersion (None: no ConfigMap)."""
        found = await self.kube.get("v1", "ConfigMap", self.owner.namespace, self._name)
        if found is None:
            return RoutingTable(), None
        text = (found.get("data") or {}).get(ROUTES_KEY)
        table = RoutingTable.model_validate_json(text) if text else RoutingTable()
        return table, str(found["metadata"]["resourceVersion"])

    async def store(self, table: RoutingTable, version: str | None) -> bool:
        """Write the table over ``version`` (None: create the ConfigMap); whether it was written."""
        manifest = render_routes(self.owner, table)
        if version is None:
            return await self.kube.create(manifest)  # False: created meanwhile
        patch = {"metadata": {"resourceVersion": version}, "data": manifest["data"]}
        try:
            await self.kube.patch("v1", "ConfigMap", self.owner.namespace, self._name, patch)
        except ConflictError:
            return False
        return True


class RouteBook:
    """Each pool's routing table (:class:`PoolRoutes`), one writer per pool at a time."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def of(self, pool: Owner) -> PoolRoutes:
        lock = self._locks.setdefault((pool.namespace, pool.name), asyncio.Lock())
        return PoolRoutes(self.kube, pool, lock)


class KubeJobs:
    """A Specialist's RayJobs (``owner`` is the Specialist), in its pool (``pool``, ``pool_spec``)."""

    def __init__(
        self,
        kube: KubeClient,
        platform: Platform,
        *,
        owner: Owner,
        pool: Owner,
        pool_spec: SpecialistPoolSpec,
    ) -> None:
        self.kube, self.platform = kube, platform
        self.owner, self.pool, self.pool_spec = owner, pool, pool_spec

    async def start(self, job: JobSpec) -> str:
        manifest = render_training_job(
            self.owner, job, self.pool_spec, self.platform, pool_name=self.pool.name
        )
        name = job_name(job)
        if await self.kube.get("ray.io/v1", "RayJob", self.owner.namespace, name) is None:
            await self.kube.apply(manifest)
        return name

    async def state(self, name: str) -> JobState:
        return job_state(await self.kube.get("ray.io/v1", "RayJob", self.owner.namespace, name))

    async def slot_free(self, training: TrainingSpec) -> bool:
        """Whether the pool's running training jobs leave room for one more (spec.maxTrainingJobs);
        each RayJob brings its own cluster, the GPUs for it are the autoscaler's (or Kueue's) to find."""
        jobs = await self.kube.list(
            "ray.io/v1", "RayJob", self.pool.namespace, {f"{API_GROUP}/pool": self.pool.name}
        )
        running = sum(job_state(j).phase is JobPhase.RUNNING for j in jobs)
        return running < self.pool_spec.max_training_jobs

    async def forget_finished(self, specialist: str, kept: set[str]) -> list[str]:
        """Delete the Specialist's finished RayJobs that its status no longer names; their results are
        in the store, and KubeRay (v1.7) deletes only a finished job's cluster, never the job."""
        jobs = await self._of(specialist)
        finished = [
            job["metadata"]["name"]
            for job in jobs
            if job["metadata"]["name"] not in kept and job_state(job).phase is not JobPhase.RUNNING
        ]
        return [
            name
            for name in sorted(finished)
            if await self.kube.delete("ray.io/v1", "RayJob", self.owner.namespace, name)
        ]

    async def running(self, specialist: str) -> list[str]:
        jobs = await self._of(specialist)
        return sorted(j["metadata"]["name"] for j in jobs if job_state(j).phase is JobPhase.RUNNING)

    async def _of(self, specialist: str) -> list[dict[str, Any]]:
        return await self.kube.list(
            "ray.io/v1", "RayJob", self.owner.namespace, {f"{API_GROUP}/specialist": specialist}
        )


class KubeFlywheelIO(DriverIO):
    """One Specialist's view: its namespace, its pool, its RayJobs; data from the shared store."""

    def __init__(
        self,
        data: StoreData,
        kube: KubeClient,
        routes: RouteBook,
        platform: Platform,
        *,
        owner: Owner,
        pool: Owner,
        pool_spec: SpecialistPoolSpec,
        nats: NatsEndpoint | None = None,
    ) -> None:
        # the operator reads the call log as its own identity (``nats``); bare URLs: no authentication
        jobs = KubeJobs(kube, platform, owner=owner, pool=pool, pool_spec=pool_spec)
        super().__init__(data, nats or NatsEndpoint(platform.nats_url), jobs, routes.of(pool))
