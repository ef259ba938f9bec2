"""The stack's own processes: the gateway and the flywheel, each a `protege` command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from protege.services.process import ServiceProcess, http_ok


class ProtegeProcess(ServiceProcess):
    """``python -m protege.cli ...`` with the stack's settings in its environment."""

    def __init__(self, data_dir: Path, arguments: Sequence[str], env: dict[str, str]) -> None:
        super().__init__(data_dir, detach=True, ready_timeout=120)
        self.arguments, self.env = list(arguments), env

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "protege.cli", *self.arguments]

    def environment(self) -> dict[str, str]:
        return self.env


class GatewayProcess(ProtegeProcess):
    name = "gateway"

    def __init__(self, data_dir: Path, host: str, port: int, env: dict[str, str], metrics_port: int) -> None:
        arguments = ["gateway", "--host", host, "--port", str(port), "--metrics-port", str(metrics_port)]
        super().__init__(data_dir, [*arguments, "--log-level", "warning"], env)
        self.url = f"http://{host}:{port}"
        self.metrics_url = f"http://{host}:{metrics_port}"  # /metrics: apart from the API

    def is_ready(self) -> bool:
        return http_ok(f"{self.url}/readyz", accept=lambda status: status == 200)


class FlywheelProcess(ProtegeProcess):
    name = "flywheel"

    def __init__(self, data_dir: Path, config: Path, heartbeat: Path, env: dict[str, str]) -> None:
        super().__init__(data_dir, ["flywheel", "run", "--config", str(config)], env)
        self.heartbeat = heartbeat
        self._started_at = 0.0

    def _start_once(self) -> FlywheelProcess:
        self._started_at = time.time()
        return super()._start_once()

    def is_ready(self) -> bool:
        """Ready once this process wrote its first heartbeat."""
        try:
            return float(json.loads(self.heartbeat.read_text())["at"]) >= self._started_at
        except (OSError, ValueError, KeyError):
            return False
