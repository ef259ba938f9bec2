"""The flywheel's data facts from the artifact store: tasks, example counts, datasets, job results.

The same for the operator and the local driver: curation writes examples and discovery
writes the task registry to the store; this reads them (cached for ``ttl_seconds``, so a
thousand Specialists do not each list the store) and builds dataset versions on demand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime

from protege.api.calls import CallRecord
from protege.api.jobs import RESULTS_AREA, JobResult
from protege.api.specialist import DataPolicy, TaskSelector
from protege.capture.connection import NatsTarget
from protege.capture.reader import StreamMissingError, read_records, subject_filter
from protege.flywheel.specialist import Dataset, TaskData
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import build_dataset, examples_in_window, load_registry
from protege.tasks.discovery.tasks import Task, TaskRegistry
from protege.training.curation.consumer import ExampleStore


def match_task(registry: TaskRegistry, selector: TaskSelector) -> Task | None:
    """The registry's task a selector names: by id (or proposed name), else by its structure."""
    tasks = [t for t in registry.tasks if t.router.fingerprint.tenant == selector.tenant]
    if selector.id is not None:
        return next((t for t in tasks if selector.id in (t.id, t.name)), None)
    match = selector.match

    def fits(task: Task) -> bool:
        shape = task.router.fingerprint
        return (
            (match.system_prompt_hash is None or shape.system_hash.startswith(match.system_prompt_hash))
            and (not match.tools or sorted(match.tools) == list(shape.tools))
            and (match.output_kind is None or match.output_kind is task.output_kind)
        )

    return next((t for t in tasks if fits(t)), None)  # the registry lists the largest first


class StoreData:
    def __init__(self, store: ArtifactStore, *, ttl_seconds: float = 10.0, min_examples: int = 20) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.min_examples = min_examples
        self._registry: TaskRegistry | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def registry(self) -> TaskRegistry | None:
        async with self._lock:
            if time.monotonic() - self._read_at > self.ttl_seconds:
                self._registry = await asyncio.to_thread(load_registry, self.store)
                self._read_at = time.monotonic()
            return self._registry

    async def resolve_task(self, selector: TaskSelector) -> TaskData | None:
        registry = await self.registry()
        task = match_task(registry, selector) if registry else None
        return TaskData(task.id, task.size) if task else None

    async def build_dataset(self, task_id: str, data: DataPolicy) -> Dataset:
        registry = await self.registry()
        if registry is None:
            raise LookupError("no task registry in the store yet; discovery has not run")
        task = registry.get(task_id)

        def build() -> Dataset:
            examples = examples_in_window(
                ExampleStore(self.store).load(task.router.fingerprint.tenant),
                now_ms=time.time_ns() // 1_000_000,
                max_age_days=data.retention_days,
                newest=data.max_examples,
            )
            manifest = build_dataset(self.store, task, examples, min_examples=self.min_examples)
            return Dataset(manifest.version, sum(manifest.metadata["counts"].values()))

        return await asyncio.to_thread(build)

    async def job_result(self, name: str) -> JobResult | None:
        """The result the job named ``name`` stored under its name (:func:`job_name`); None while
        there is none."""

        def read() -> JobResult | None:
            if not self.store.has_object(RESULTS_AREA, name):
                return None
            return JobResult.model_validate_json(self.store.get_object(RESULTS_AREA, name))

        return await asyncio.to_thread(read)


async def call_records(
    nats_url: NatsTarget, tenant: str, since: datetime | None, limit_seconds: float = 20.0
) -> Sequence[CallRecord]:
    """A tenant's logged calls since a time (rollout observations); a TimeoutError after ``limit_seconds``
    seconds, so a slow call log delays one pass instead of holding it (and a deletion) forever."""
    found: list[CallRecord] = []
    try:
        async with asyncio.timeout(limit_seconds):
            async for record in read_records(nats_url, subject=subject_filter(tenant), since=since):
                if isinstance(record, CallRecord):
                    found.append(record)
    except StreamMissingError:
        pass  # no call logged yet
    except TimeoutError:
        raise TimeoutError(
            f"reading {tenant}'s calls from {nats_url} took over {limit_seconds:.0f} s"
        ) from None
    return found


class StoreFacts:
    """The part of a ``FlywheelIO`` that is the same everywhere: the store's facts, the call log.

    The operator and the local driver add their own jobs and routing table to it.
    """

    def __init__(self, data: StoreData, nats_url: NatsTarget) -> None:
        self.data, self.nats_url = data, nats_url

    async def resolve_task(self, selector: TaskSelector) -> TaskData | None:
        return await self.data.resolve_task(selector)

    async def build_dataset(self, task_id: str, data: DataPolicy) -> Dataset:
        return await self.data.build_dataset(task_id, data)

    async def job_result(self, name: str) -> JobResult | None:
        return await self.data.job_result(name)

    async def records(self, tenant: str, since: datetime | None) -> Sequence[CallRecord]:
        return await call_records(self.nats_url, tenant, since)
