"""Gateway API keys: stored as SHA-256 hashes, each mapped to a tenant and a default app."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from protege.api.calls import check_subject_token
from protege.config import ApiKey, ConfigError
from protege.serving.gateway.errors import GatewayError

KEY_PREFIX = "pgk-"
APP_HEADER = "x-protege-app"
AZURE_KEY_HEADER = "api-key"  # how Azure OpenAI clients send their key


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_keys_file(path: Path) -> list[ApiKey]:
    """Read a YAML or JSON list of api_keys entries (a mounted Secret, say)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return TypeAdapter(list[ApiKey]).validate_python(data or [])
    except OSError as error:
        raise ConfigError(f"gateway.api_keys_file {path}: cannot read it ({error.strerror})") from None
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


class KeyRing:
    """Looks a presented key up by its hash; a key never has to be kept in clear text."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_hash = {key.sha256: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_hash)

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
        return Principal(tenant=entry.tenant, app=app, key_name=entry.name)


def _presented_key(headers: Mapping[str, str]) -> str | None:
    scheme, _, bearer = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip()
    key = (headers.get(AZURE_KEY_HEADER) or "").strip()
    return key or None
