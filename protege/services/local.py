"""`protege services up|down|status`: the local NATS and S3 store, kept running in the background."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from protege.capture.access import CALL_STREAM
from protege.services.nats import NatsServer
from protege.services.process import ServiceError, http_ok, pid_alive, terminate_pid
from protege.services.seaweedfs import SeaweedS3


@dataclass
class RunningService:
    name: str
    pid: int
    url: str
    probe_url: str
    data_dir: str


def state_path(home: Path) -> Path:
    return home / "services" / "state.json"


def read_state(home: Path) -> dict[str, RunningService]:
    path = state_path(home)
    if not path.exists():
        return {}
    return {name: RunningService(**entry) for name, entry in json.loads(path.read_text()).items()}


def _write_state(home: Path, services: dict[str, RunningService]) -> None:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: asdict(s) for name, s in services.items()}, indent=2))
    os.replace(tmp, path)


def is_healthy(service: RunningService) -> bool:
    accept = (lambda s: s == 200) if service.name == "nats" else (lambda s: s in (200, 403))
    return pid_alive(service.pid) and http_ok(service.probe_url, accept=accept)


def services_up(
    home: Path, nats_port: int = 4222, s3_port: int = 8333, stream: str = CALL_STREAM
) -> dict[str, RunningService]:
    """Start whatever of NATS (authentication on: identities under its data directory) and
    SeaweedFS is not running; return all of them."""
    running = {name: s for name, s in read_state(home).items() if is_healthy(s)}
    base = home / "services"
    if "nats" not in running:
        nats = NatsServer(
            base / "nats", port=nats_port, monitor_port=nats_port + 4000, detach=True, stream=stream
        ).start()
        running["nats"] = RunningService(
            "nats",
            _pid(nats.pid),
            nats.url,
            f"http://{nats.host}:{nats.monitor_port}/healthz",
            str(nats.data_dir),
        )
        _write_state(home, running)
    if "s3" not in running:
        s3 = SeaweedS3(base / "seaweedfs", s3_port=s3_port, detach=True).start()
        running["s3"] = RunningService(
            "s3", _pid(s3.pid), s3.endpoint_url, s3.endpoint_url + "/", str(s3.data_dir)
        )
        _write_state(home, running)
    return running


def _pid(pid: int | None) -> int:
    if pid is None:
        raise ServiceError("service process vanished while starting")
    return pid


def services_down(home: Path) -> list[str]:
    stopped = []
    for name, service in read_state(home).items():
        if pid_alive(service.pid):
            terminate_pid(service.pid)
            stopped.append(name)
    state_path(home).unlink(missing_ok=True)
    return stopped
