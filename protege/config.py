"""One settings object for every Protégé process: PROTEGE_* variables and an optional file.

Precedence, highest first: keyword arguments, environment (``PROTEGE_NATS_URL``, nested
fields with ``__`` as in ``PROTEGE_TEACHER__URL``), the file named by ``PROTEGE_CONFIG``
(YAML or TOML), then defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, HttpUrl, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting and the fix."""


def default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "protege"


class S3Settings(BaseModel):
    endpoint_url: HttpUrl | None = Field(
        default=None, description="S3 endpoint for non-AWS stores (SeaweedFS, MinIO); AWS when unset."
    )
    access_key_id: SecretStr | None = Field(default=None, description="Access key; the AWS chain when unset.")
    secret_access_key: SecretStr | None = Field(default=None, description="Secret key for access_key_id.")
    region: str = Field(default="us-east-1", description="Region name sent to the store.")


class TeacherSettings(BaseModel):
    url: HttpUrl | None = Field(
        default=None, description="OpenAI-compatible base URL of the teacher, with /v1."
    )
    model: str | None = Field(default=None, description="Model name to ask the teacher for.")
    api_key: SecretStr | None = Field(default=None, description="Teacher API key (use a secret store).")
    timeout_seconds: float = Field(default=120, gt=0, description="Per-call timeout.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROTEGE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=default_home, description="Local state: services, spools, models.")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server(s), comma-separated.")
    artifact_store: str = Field(
        default="",
        description="Artifact store URL: s3://bucket/prefix or file:///path; <home>/artifacts when empty.",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 endpoint and credentials.")
    model_store: Path | None = Field(
        default=None, description="Directory of pulled base models; <home>/models."
    )
    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="The big model.")

    @field_validator("nats_url")
    @classmethod
    def _nats(cls, value: str) -> str:
        for server in value.split(","):
            scheme = server.strip().partition("://")[0]
            if scheme not in ("nats", "tls", "ws", "wss") or "://" not in server:
                raise ValueError(
                    f"{server.strip()!r} is not a NATS URL; write e.g. nats://127.0.0.1:4222 "
                    "(several servers separated by commas)"
                )
        return value

    @field_validator("artifact_store")
    @classmethod
    def _store(cls, value: str) -> str:
        if (value and value.partition("://")[0] not in ("s3", "file", "memory")) or (
            value and "://" not in value
        ):
            raise ValueError(
                f"{value!r} is not an artifact store URL; write s3://bucket/prefix or file:///absolute/path"
            )
        return value

    @property
    def artifact_store_url(self) -> str:
        return self.artifact_store or (self.home / "artifacts").resolve().as_uri()

    @property
    def model_dir(self) -> Path:
        return self.model_store or self.home / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls)


class _FileSource(PydanticBaseSettingsSource):
    """Settings from the YAML or TOML file named by PROTEGE_CONFIG."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ below returns everything at once

    def __call__(self) -> dict[str, Any]:
        name = os.environ.get("PROTEGE_CONFIG")
        if not name:
            return {}
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"PROTEGE_CONFIG names {path}, which is not a file; create it or unset the variable"
            )
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{path} does not parse: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, e.g. 'nats_url: nats://host:4222'")
        return data


def load_settings(**overrides: Any) -> Settings:
    """Load the settings; on a bad value raise ConfigError naming the variable and the fix."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            field = "__".join(str(p) for p in item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "is not a Protégé setting; check its spelling (see `protege config show`)"
            lines.append(f"PROTEGE_{field.upper()} ({field.replace('__', '.')}): {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


__all__ = ["ConfigError", "Settings", "load_settings"]
