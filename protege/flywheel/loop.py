"""The local flywheel's heartbeat: curate → discover → a Specialist per new task → one driver pass.

What the chart's curator Deployment, discovery CronJob and the operator do in a cluster,
done in turn by one process for `protege up` and the demo. Every step resumes after a
crash: curation is a durable JetStream consumer (acknowledged after the examples are
stored), discovery keeps task ids stable, Specialists are files, and the driver's state is
its status files and deterministic job names.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from protege.capture.connection import NatsTarget
from protege.flywheel.local import LocalDriver, Pass
from protege.flywheel.suggest import specialist_name, suggest_specialist
from protege.store.artifacts import ArtifactStore
from protege.tasks.datasets import load_registry, save_registry
from protege.tasks.discovery import DiscoverySettings, Embedder, MiniLM, discover
from protege.training.curation import Curator, ExampleStore


@dataclass
class Tick:
    curated: int = 0  # examples kept by curation in this tick
    discovered: bool = False  # whether discovery ran
    tasks: int = 0
    created: list[str] = field(default_factory=list)  # Specialists created for new tasks
    driven: Pass = field(default_factory=Pass)


class LocalFlywheel:
    def __init__(
        self,
        store: ArtifactStore,
        nats_url: NatsTarget,
        driver: LocalDriver,
        *,
        pool: str = "local",
        policy: dict[str, Any] | None = None,
        min_task_size: int = 10,
        discover_every: float = 60.0,
        curator: Curator | None = None,
        embedder: Embedder | None = None,
        curate_seconds: float = 15.0,
    ) -> None:
        self.store, self.nats_url, self.driver = store, nats_url, driver
        self.pool, self.policy = pool, policy or {}
        self.discovery = DiscoverySettings(min_task_size=min_task_size)
        self.discover_every = discover_every
        self.curate_seconds = curate_seconds
        self.curator = curator or Curator(nats_url, store)
        self.embedder = embedder or MiniLM()
        self._discovered_at = float("-inf")
        self._examples_at_discovery = -1

    async def tick(self) -> Tick:
        done = Tick()
        kept_before = self.curator.stats.kept
        # Under steady traffic the log is never idle: a tick curates for a bounded time and
        # leaves the rest to the next one (the durable consumer remembers where it stopped).
        enough = asyncio.Event()
        timer = asyncio.get_running_loop().call_later(self.curate_seconds, enough.set)
        try:
            await self.curator.run(until_idle=True, idle_seconds=0.5, stop=enough)
        finally:
            timer.cancel()
        done.curated = self.curator.stats.kept - kept_before
        registry = await asyncio.to_thread(load_registry, self.store)
        due = time.monotonic() - self._discovered_at >= self.discover_every
        if due or registry is None:
            examples = await asyncio.to_thread(ExampleStore(self.store).load)
            if examples and len(examples) != self._examples_at_discovery:
                registry = await asyncio.to_thread(
                    discover, examples, self.embedder, registry, self.discovery
                )
                await asyncio.to_thread(save_registry, self.store, registry)
                self._discovered_at, self._examples_at_discovery = time.monotonic(), len(examples)
                done.discovered = True
        if registry is not None:
            done.tasks = len(registry.tasks)
            specialists = self.driver.specialists()
            known = {spec.task.id for spec, _ in specialists.values() if spec is not None}
            taken = set(specialists)
            for task in registry.tasks:
                if task.id not in known:
                    name = specialist_name(task, taken)
                    taken.add(name)
                    self.driver.add(name, suggest_specialist(task, self.pool, self.policy))
                    done.created.append(name)
        done.driven = await self.driver.step()
        return done
