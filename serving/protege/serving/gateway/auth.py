"""Gateway API keys: stored as SHA-256 hashes, each mapped to a tenant and a default app.

Keys come from the settings (``gateway.api_keys``) and from ``gateway.api_keys_file``, which
is re-read while the gateway runs (:class:`KeySource`): a key removed from the file stops
working within ``gateway.api_keys_refresh_seconds``, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from protege.api.calls import check_subject_token
from protege.config import ApiKey, ConfigError, RateLimits
from protege.serving.gateway.errors import GatewayError

log = logging.getLogger(__name__)

KEY_PREFIX = "pgk-"
APP_HEADER = "x-protege-app"
AZURE_KEY_HEADER = "api-key"  # how Azure OpenAI clients send their key


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(path: Path, content: bytes) -> list[ApiKey]:
    """The api_keys entries in a keys file's content, or a ConfigError saying what is wrong."""
    try:
        text = content.decode()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return TypeAdapter(list[ApiKey]).validate_python(data or [])
    except (ValueError, yaml.YAMLError, ValidationError) as error:
        raise ConfigError(
            f"gateway.api_keys_file {path}: expected a list of {{sha256, tenant, app}} entries "
            f"(make one with `protege gateway keys create`): {error}"
        ) from None


@dataclass(frozen=True)
class Principal:
    tenant: str
    app: str
    key_name: str | None = None
    key_id: str = ""  # the key's SHA-256: what its limits are counted by
    limits: RateLimits | None = None  # the key's own limits (gateway.limits.key's fields it replaces)


class KeyRing:
    """Looks a presented key up by its hash; a key never has to be kept in clear text."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_hash = {key.sha256: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_hash)

    @property
    def apps(self) -> frozenset[str]:
        """The keys' own (default) apps."""
        return frozenset(key.app for key in self._by_hash.values())

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller's tenant and app, or a 401/400 GatewayError.

        The key comes as ``Authorization: Bearer <key>`` (OpenAI's clients) or as
        ``api-key: <key>`` (Azure OpenAI's).
        """
        presented = _presented_key(headers)
        if presented is None:
            raise GatewayError(
                401,
                "You didn't provide an API key. Send your Protégé gateway key as "
                "'Authorization: Bearer <key>' (the OpenAI SDKs do this with api_key=...) or as "
                "'api-key: <key>' (the Azure OpenAI clients).",
                code="invalid_api_key",
            )
        entry = self._by_hash.get(hash_key(presented))
        if entry is None:
            raise GatewayError(
                401,
                "Incorrect API key provided. Ask your Protégé operator for a gateway key "
                "(`protege gateway keys create`).",
                code="invalid_api_key",
            )
        app = headers.get(APP_HEADER) or entry.app
        try:
            check_subject_token(app, "X-Protege-App")
        except ValueError as error:
            raise GatewayError(400, str(error), param="X-Protege-App") from None
        return Principal(
            tenant=entry.tenant, app=app, key_name=entry.name, key_id=entry.sha256, limits=entry.limits
        )


class KeySource:
    """The accepted keys: the settings' and the keys file's, the file re-read when its content changes.

    The first read fails loudly (a ConfigError: the gateway does not start with a broken
    file). Later, a file that cannot be read or parsed (half written, say) is logged and the
    last good keys stay until it is fixed: a typo must not lock every caller out. The whole
    content is compared, not the modification time (too coarse on some filesystems, and a
    Kubernetes Secret volume swaps a symlink).
    """

    def __init__(self, keys: Iterable[ApiKey], path: Path | None) -> None:
        self.static = list(keys)
        self.path = path
        self._content: bytes | None = None  # the file as last read well
        self._bad: bytes | None = None  # the file as last read and refused
        self._problem: str | None = None  # what was last logged about it
        self.errors = 0  # re-reads that failed, for the metrics

    def load(self) -> KeyRing:
        if self.path is None:
            return KeyRing(self.static)
        try:
            content = self.path.read_bytes()
        except OSError as error:
            raise ConfigError(
                f"gateway.api_keys_file {self.path}: cannot read it ({error.strerror})"
            ) from None
        ring = KeyRing([*self.static, *parse_keys(self.path, content)])
        self._content = content
        return ring

    def refresh(self) -> KeyRing | None:
        """A new key ring if the file changed (None if not, or if it cannot be read or parsed now)."""
        if self.path is None:
            return None
        try:
            content = self.path.read_bytes()
        except OSError as error:
            self._failed(f"gateway.api_keys_file {self.path}: cannot read it ({error.strerror})")
            return None
        if content == self._content:
            self._problem = None  # as last read well (fixed back, say): a new problem is told again
            return None
        if content == self._bad:
            return None
        try:
            ring = KeyRing([*self.static, *parse_keys(self.path, content)])
        except ConfigError as error:
            self._bad = content
            self._failed(str(error))
            return None
        self._content, self._bad, self._problem = content, None, None
        log.info("gateway: %s changed: %d keys now", self.path, len(ring))
        return ring

    def _failed(self, problem: str) -> None:
        if problem != self._problem:  # once per problem, not every interval
            self.errors += 1
            self._problem = problem
            log.error("gateway: re-reading the keys failed; the last good keys stay: %s", problem)


def _presented_key(headers: Mapping[str, str]) -> str | None:
    scheme, _, bearer = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip()
    key = (headers.get(AZURE_KEY_HEADER) or "").strip()
    return key or None
