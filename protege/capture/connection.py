"""Where the call log is and who a process is there: NATS servers, an identity, TLS trust.

Every Protégé NATS client connects through :meth:`NatsEndpoint.connect`. An endpoint prints
as its server URLs only: credentials never reach a log line or an error message.

Credentials come from the settings (``nats_auth``): a ``user`` and ``password`` (Kubernetes:
the password from a Secret), or a ``credentials_dir`` of one ``<user>.json`` file per identity
(mode 0600, written by the local ``nats-server``: `protege services up`, `protege up`) from
which each component takes its own. A listener-SDK tenant is handed one such file
(:meth:`NatsEndpoint.from_credentials`), which may also name the servers.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protege.capture.access import inbox_prefix, tenant_of
from protege.config import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client


class CredentialsError(ValueError):
    """A credentials file is missing or malformed; the message names the file, never its content."""


def write_credentials(path: Path, user: str, password: str, servers: str | None = None) -> Path:
    """A credentials file (mode 0600, replaced atomically): the ``user``, its password, maybe the servers."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data: dict[str, str] = {"user": user, "password": password}
    if servers:
        data["url"] = servers
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)
    return path


def read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CredentialsError(f"no NATS credentials file at {path}") from None
    except (OSError, ValueError) as error:
        raise CredentialsError(
            f"{path} is not a readable NATS credentials file ({type(error).__name__})"
        ) from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("user"), str)
        or not isinstance(data.get("password"), str)
    ):
        raise CredentialsError(f'{path} must hold {{"user": ..., "password": ...}} (a NATS credentials file)')
    return {k: str(v) for k, v in data.items()}


@dataclass(frozen=True)
class NatsEndpoint:
    """NATS server URLs (comma-separated), and the identity and TLS trust to connect with."""

    servers: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca_file: Path | None = None

    def __str__(self) -> str:
        return self.servers

    @property
    def tenant(self) -> str | None:
        """The tenant a listener-SDK identity publishes for (``tenant-<name>``); None otherwise."""
        return tenant_of(self.user)

    @classmethod
    def of(cls, target: NatsTarget) -> NatsEndpoint:
        """An endpoint as is, or bare server URLs (no identity: a NATS without authentication)."""
        return target if isinstance(target, NatsEndpoint) else cls(target)

    @classmethod
    def from_credentials(cls, path: Path, servers: str | None = None) -> NatsEndpoint:
        """The identity in a credentials file, at ``servers`` or else the URL the file names."""
        data = read_credentials(Path(path).expanduser())
        url = servers or data.get("url")
        if not url:
            raise CredentialsError(f"{path} names no NATS URL; pass the servers too")
        return cls(url, data["user"], data["password"])

    @classmethod
    def from_settings(cls, settings: Settings, component: str) -> NatsEndpoint:
        """``component``'s endpoint (gateway, curator, operator): the configured user, else its
        file in ``nats_auth.credentials_dir``, else no identity."""
        auth = settings.nats_auth
        ca = auth.tls_ca_file
        if auth.user is not None:
            password = auth.password.get_secret_value() if auth.password is not None else None
            return cls(settings.nats_url, auth.user, password, ca)
        if auth.credentials_dir is not None:
            data = read_credentials(auth.credentials_dir / f"{component}.json")
            return cls(settings.nats_url, data["user"], data["password"], ca)
        return cls(settings.nats_url, tls_ca_file=ca)

    def with_servers(self, servers: str) -> NatsEndpoint:
        return replace(self, servers=servers)

    def options(self) -> dict[str, Any]:
        """``nats.connect`` keyword arguments: servers, identity, inbox prefix, TLS."""
        options: dict[str, Any] = {"servers": [s.strip() for s in self.servers.split(",")]}
        if self.user is not None:
            options |= {"user": self.user, "password": self.password, "inbox_prefix": inbox_prefix(self.user)}
        if self.tls_ca_file is not None:
            options["tls"] = ssl.create_default_context(cafile=str(self.tls_ca_file))
        return options

    async def connect(self, **options: Any) -> Client:
        import nats

        return await nats.connect(**self.options(), **options)


NatsTarget = NatsEndpoint | str

__all__ = ["CredentialsError", "NatsEndpoint", "NatsTarget", "read_credentials", "write_credentials"]
