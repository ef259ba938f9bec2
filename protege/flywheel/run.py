"""The local flywheel as a process of its own (`protege flywheel run --config FILE`).

`protege up` starts it, and starts it again if it dies: everything it knows is in the
store, the call log, its status files and Ray's job list, so a new one carries on where
the old one stopped. Each heartbeat it writes ``<state>/heartbeat.json`` (when, and what the
tick did) for `protege up`'s live view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protege.api.pool import SpecialistPoolSpec
from protege.capture.access import OPERATOR
from protege.capture.connection import NatsEndpoint
from protege.config import load_settings
from protege.flywheel.data import StoreData
from protege.flywheel.local import LocalDriver, LocalFlywheelIO, RayJobs, RouteFile, write_atomically
from protege.flywheel.loop import LocalFlywheel, Tick
from protege.flywheel.pace import FlywheelPace
from protege.flywheel.specialist import PoolFacts
from protege.store.artifacts import ArtifactStore
from protege.training.curation import Curator

log = logging.getLogger("protege.flywheel")
HEARTBEAT = "heartbeat.json"


class FlywheelProcessConfig(BaseModel):
    """What the flywheel process needs beyond the settings (written by `protege up`, mode 0600)."""

    model_config = ConfigDict(extra="forbid")

    state: Path = Field(description="Specialist manifests and statuses.")
    routes: Path = Field(description="The routing table file the gateway reads.")
    ray_address: str
    ray_token: str = Field(repr=False)
    job_cpus: float | None = None
    job_yields_cpus: bool = False
    pool_name: str
    pool: dict[str, Any]
    policy: dict[str, Any]
    pace: FlywheelPace


def build_flywheel(config: FlywheelProcessConfig) -> LocalFlywheel:
    settings = load_settings()
    store = ArtifactStore.from_settings(settings)
    pool = SpecialistPoolSpec.model_validate(config.pool)
    jobs = RayJobs(
        config.ray_address,
        {"Authorization": f"Bearer {config.ray_token}"},
        job_cpus=config.job_cpus,
        yield_cpus=config.job_yields_cpus,
    )
    reader = NatsEndpoint.from_settings(settings, OPERATOR)  # curation has the curator's identity
    io = LocalFlywheelIO(StoreData(store), jobs, RouteFile(config.routes), reader)
    driver = LocalDriver(
        config.state,
        io,
        PoolFacts.of(pool),
        job_options=config.pace.job_options,
        pool_name=config.pool_name,
    )
    return LocalFlywheel(
        store,
        reader,
        driver,
        pool=config.pool_name,
        policy=config.policy,
        min_task_size=config.pace.min_task_size,
        discover_every=config.pace.discover_every_seconds,
        curator=Curator.from_settings(settings, store),  # the configured stream and curation
    )


def _summary(tick: Tick) -> dict[str, Any]:
    return {
        "at": time.time(),
        "curated": tick.curated,
        "discovered": tick.discovered,
        "tasks": tick.tasks,
        "created": tick.created,
        "events": [f"{name}: {event.reason}: {event.message}" for name, event in tick.driven.events],
        "invalid": tick.driven.invalid,
    }


async def run_forever(config: FlywheelProcessConfig) -> None:
    """Heartbeat until SIGTERM or SIGINT; a failed tick is logged and retried next time."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flywheel = build_flywheel(config)
    heartbeat = config.state / HEARTBEAT
    write_atomically(heartbeat, json.dumps({"at": time.time(), "started": True}))
    while not stop.is_set():
        try:
            tick = await flywheel.tick()
            summary = _summary(tick)
            for line in summary["events"]:
                log.info("%s", line)
        except Exception as error:  # one bad tick must not stop the flywheel
            log.exception("heartbeat failed; retrying in %.0f s", config.pace.interval_seconds)
            summary = {"at": time.time(), "error": f"{type(error).__name__}: {error}"}
        write_atomically(heartbeat, json.dumps(summary))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.pace.interval_seconds)
